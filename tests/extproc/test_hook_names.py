"""An ``on_*`` method that is no hook (a typo) is warned about when the class is defined, with
the closest hook's name; real hooks, lifecycle methods and other helpers are not."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest

import extproc
from tests.helpers.common import ROOT

APP = '''import extproc


class Typo(extproc.Processor):
    async def on_request_header(self, headers):
        headers["x-seen"] = "1"
'''


def _gen(tmp_path, **env: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "typo_app.py").write_text(APP)
    return subprocess.run(
        [sys.executable, "-m", "extctl", "gen", "envoy", "typo_app:Typo", "--uds",
         "/run/extproc/extproc.sock", "--upstream", "127.0.0.1:8080"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_a_misspelled_hook_is_warned_about_at_its_def_line(tmp_path):
    done = _gen(tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines()[0] == (
        f"{tmp_path / 'typo_app.py'}:5: HookNameWarning: Typo.on_request_header is not a "
        "hook, so no phase calls it: did you mean on_request_headers?")
    # Filtered by its category, as users silence a warning.
    quiet = _gen(tmp_path, PYTHONWARNINGS="ignore::extproc.HookNameWarning")
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.parametrize(("name", "suggestion"), [
    ("on_response_bodies", "did you mean on_response_body?"),
    ("on_request_trailer", "did you mean on_request_trailers?"),
    ("on_start", "did you mean on_startup?"),
    ("on_something_else", "the hooks are on_request_headers, on_request_body, "),
])
def test_each_kind_of_on_method_that_is_no_hook_is_named(name, suggestion):
    async def method(self, message):
        return None

    for kind in (method, classmethod(method), staticmethod(method)):
        with pytest.warns(extproc.HookNameWarning) as caught:
            type("Misnamed", (extproc.Processor,), {name: kind})
        (warning,) = caught
        assert str(warning.message).startswith(f"Misnamed.{name} is not a hook")
        assert suggestion in str(warning.message)
        assert warning.filename == __file__  # the def line, not extproc's


def test_hooks_lifecycle_methods_and_helpers_are_not_warned_about():
    with warnings.catch_warnings():
        warnings.simplefilter("error")

        class Fine(extproc.Processor):
            request_body_mode = extproc.BodyMode.STREAMED
            on_error_count = 0  # an attribute, not a method

            @classmethod
            async def on_startup(cls) -> None:
                pass

            @classmethod
            async def on_shutdown(cls) -> None:
                pass

            async def on_request_headers(self, headers: extproc.Headers) -> None:
                self.helper()

            async def on_request_body(self, body: extproc.Body) -> None:
                pass

            async def on_response_trailers(self, trailers: extproc.Headers) -> None:
                pass

            def helper(self) -> None:
                pass

            def _on_private(self) -> None:
                pass

            def handle_on_error(self) -> None:
                pass

        class Again(Fine):
            async def on_request_headers(self, headers: extproc.Headers) -> None:
                pass

    assert Again.processing_mode().phases == Fine.processing_mode().phases
