"""``extctl dev`` on a port that is taken: refused with one line and exit 5, before anything
starts (Envoy's listeners set SO_REUSEPORT, so a second Envoy would silently share it)."""

from __future__ import annotations

import signal
import socket

import pytest

from tests.helpers.common import http, wait_for_line

pytestmark = pytest.mark.envoy


def _refused(proc) -> str:
    """The only line a refused start printed (its exit code checked by the caller)."""
    out, err = proc.communicate(timeout=30)
    assert out == "", out
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_a_second_dev_on_a_port_in_use_is_refused_and_the_first_keeps_it(extctl):
    first = extctl("dev", "--port", "0")
    metrics = wait_for_line(first, r"^metrics: http://(127\.0\.0\.1:\d+)/metrics")[0].group(1)
    port = int(wait_for_line(first, r"try: curl -i http://127\.0\.0\.1:(\d+)/")[0].group(1))
    second = extctl("dev", "--port", str(port))
    refused = _refused(second)
    assert second.returncode == 5
    assert refused == (f"error: 127.0.0.1:{port} (Envoy's listener) is already in use: "
                       "another process listens there (another extctl dev?); stop it or "
                       "choose another port")
    # Every request still reaches the first stack (the demo processor's header).
    for _ in range(6):
        reply = http(port, "/")
        assert ["x-extkit-demo", "request seen"] in reply.json()["headers"]
    # The processor's admin port too.
    admin = extctl("dev", "--port", "0", "--admin", metrics)
    assert _refused(admin) == (f"error: {metrics} (the processor's admin endpoint) is already "
                               "in use: another process listens there (another extctl dev?); "
                               "stop it or choose another port")
    assert admin.returncode == 5
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=30)
    assert first.returncode == 0


def test_dev_on_a_port_another_program_listens_on_exits_5_with_one_line(extctl):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = extctl("dev", "--port", str(port))
        refused = _refused(proc)
    assert proc.returncode == 5
    assert refused.startswith(f"error: 127.0.0.1:{port} (Envoy's listener) is already in use")
