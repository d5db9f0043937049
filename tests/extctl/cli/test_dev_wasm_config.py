"""``extctl dev --wasm-config`` takes a JSON value, as ``gen`` and Envoy Gateway do: the module
receives the same text from all three (a string quoted, an object compact); text handed as is
is ``--wasm-config-text``. Through a real Envoy, with the filter of ``extctl new wasm``, which
answers with its configuration in ``x-filter`` ("on" when there is none)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import wasmtime
import yaml

from tests.helpers.common import ROOT, http, wait_for_line

pytestmark = pytest.mark.envoy


@pytest.fixture(scope="module")
def tagger(tmp_path_factory: pytest.TempPathFactory) -> str:
    module = tmp_path_factory.mktemp("tagger") / "filter.wasm"
    module.write_bytes(wasmtime.wat2wasm((ROOT / "examples/wasm-tagger/filter.wat").read_text()))
    return str(module)


def _x_filter(extctl, *options: str) -> str:
    """Run ``extctl dev OPTIONS``, send one request, stop it: the x-filter header."""
    proc = extctl("dev", "--port", "0", "--quiet", *options)
    port = int(wait_for_line(proc, r"try: curl -i http://127\.0\.0\.1:(\d+)/")[0].group(1))
    reply = http(port, "/")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert reply.status == 200
    return reply.headers["x-filter"]


def _gen_configuration(tagger: str, value: str) -> str:
    """The configuration text ``gen envoy --wasm-config tag=VALUE`` writes for the module."""
    done = subprocess.run([sys.executable, "-m", "extctl", "gen", "envoy", "--wasm",
                           f"tag={tagger}", "--wasm-config", f"tag={value}"],
                          capture_output=True, text=True, timeout=60, check=True)
    text = yaml.safe_load(done.stdout)
    (listener,) = text["static_resources"]["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = next(f for f in manager["http_filters"] if f["name"].startswith(
        "envoy.filters.http.wasm"))
    return str(wasm["typed_config"]["config"]["configuration"]["value"])


@pytest.mark.parametrize("value", ['"tagged"', '{"tag": "a", "n": 1}'])
def test_dev_hands_the_module_the_json_text_gen_writes(extctl, tagger, value):
    seen = _x_filter(extctl, "--wasm", tagger, "--wasm-config", value)
    assert seen == _gen_configuration(tagger, value)
    assert seen == {'"tagged"': '"tagged"', '{"tag": "a", "n": 1}': '{"tag":"a","n":1}'}[value]


def test_dev_defaults_to_an_empty_object_and_hands_text_as_is(extctl, tagger):
    assert _x_filter(extctl, "--wasm", tagger) == "{}"
    assert _x_filter(extctl, "--wasm", tagger, "--wasm-config-text", "tagged") == "tagged"
    assert _x_filter(extctl, "--wasm", tagger, "--wasm-config-text", "") == "on"  # none


def test_dev_refuses_a_configuration_that_is_not_json_with_one_line_and_exit_2(extctl, tagger):
    proc = extctl("dev", "--port", "0", "--wasm", tagger, "--wasm-config", "tagged")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    (line,) = err.strip().splitlines()
    assert line.startswith("error: --wasm-config tagged is not JSON (")
    assert "a string is '\"tagged\"'; --wasm-config-text hands text as is" in line
    both = extctl("dev", "--port", "0", "--wasm", tagger, "--wasm-config", "{}",
                  "--wasm-config-text", "tagged")
    _, err = both.communicate(timeout=60)
    assert both.returncode == 2
    assert err.strip() == "error: give --wasm-config (JSON) or --wasm-config-text, not both"
