"""Socket files under hostile conditions: a stale socket another user left in a sticky
directory, and the window between creating a socket and setting its mode. Real users (CI runs
as root, which creates them), a real ``extctl serve``."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.common import ROOT, wait_for_socket
from tests.helpers.users import _as, _python_for

pytestmark = pytest.mark.envoy


def _umask(mask: int, command: list[str]) -> list[str]:
    """``command`` run under ``mask`` (by a shell: a preexec_fn is not safe in this process,
    which runs gRPC's threads)."""
    return ["sh", "-c", f'umask {mask:03o} && exec "$@"', "sh", *command]


@pytest.mark.parametrize(("workers", "umask", "message"), [
    (1, 0, "a stale socket {path} (owner uid "),  # anyone may connect: found stale
    (2, 0, "a stale socket {path} (owner uid "),
    (1, 0o022, "a socket {path} (owner uid "),  # only its owner may connect
])
def test_a_stale_socket_of_another_user_in_a_sticky_directory_exits_3_with_one_line(
        users, shared, workers, umask, message):
    base = Path(tempfile.mkdtemp(prefix="xk-sticky-", dir="/tmp"))
    try:
        base.chmod(0o1777)  # like /tmp: only a file's owner may remove it
        env = shared.env(base)
        python = _python_for(users.server, env)
        path = base / ("x-0.sock" if workers > 1 else "x.sock")
        leave_stale = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
                       "s.bind(sys.argv[1])\n")  # exits without unlinking: stale
        subprocess.run(_umask(umask, _as(users.outsider, python, "-c", leave_stale,
                                         str(path))),
                       env=env, cwd=base, check=True, timeout=60, capture_output=True)
        assert stat.S_ISSOCK(path.lstat().st_mode)
        done = subprocess.run(
            _as(users.server, python, "-m", "extctl", "serve", "tests.helpers.procs:HeadersOnly",
                "--uds",
                str(base / "x.sock"), "--workers", str(workers), "--app-dir",
                str(shared.root)),
            env=env, cwd=base, capture_output=True, text=True, timeout=60)
        assert done.returncode == 3, done.stderr
        assert "Traceback" not in done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: " + message.format(path=path)), last
        assert "remove it as its owner or choose another path" in last
        assert path.exists()  # not ours to remove
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_the_socket_never_exists_with_a_wider_mode_than_asked(sock_dir, transport):
    """Under umask 000, with the server held for 1.5 s right after bind() (strace delays the
    listen() that follows; with pyvoy, Envoy's), the socket already has the mode asked for
    when it appears: no window in which anyone the umask allowed could connect."""
    path = sock_dir / "m.sock"
    strace = shutil.which("strace")
    assert strace is not None, "strace is missing: run scripts/setup.sh"
    proc = subprocess.Popen(
        _umask(0, [strace, "-f", "-o", "/dev/null", "-e", "trace=listen",
                   "-e", "inject=listen:delay_enter=1500000",
                   sys.executable, "-m", "extctl", "serve", "tests.helpers.procs:HeadersOnly",
                   "--uds",
                   str(path), "--socket-mode", "600", "--transport", transport]),
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the socket never appeared"
            time.sleep(0.005)
        first_seen = stat.S_IMODE(path.lstat().st_mode)
        assert first_seen == 0o600, oct(first_seen)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # strace and the server it runs
        proc.communicate(timeout=30)


def test_hooks_create_files_under_the_users_umask_not_the_sockets(sock_dir, started,
                                                                  transport):
    """The socket's mode is the socket's: a hook's own files follow the umask serve was started
    with, on both transports (pyvoy's Envoy included)."""
    from tests.helpers.serve import _headers_request, _process_once

    path = sock_dir / "u.sock"
    proc = subprocess.Popen(
        _umask(0o022, [sys.executable, "-m", "extctl", "serve", "tests.helpers.procs:WritesFiles",
                       "--uds",
                       str(path), "--socket-mode", "666", "--transport", transport]),
        env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    started.append(proc)
    wait_for_socket(path, proc)
    target = sock_dir / "made"
    _process_once(f"unix:{path}", _headers_request(**{"x-file": str(target)}))
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert stat.S_IMODE((sock_dir / "made.d").stat().st_mode) == 0o755
    assert stat.S_IMODE(path.stat().st_mode) == 0o666
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(20) == 0


def test_a_server_removes_its_socket_at_exit_only_while_it_is_its_own(sock_dir, extctl,
                                                                       transport):
    """Another server took the path meanwhile (its socket replaced ours): ours stopping must
    not remove theirs."""
    import socket as socket_module

    path = sock_dir / "o.sock"
    proc = extctl("serve", "tests.helpers.procs:HeadersOnly", "--uds", str(path), "--transport",
                  transport)
    wait_for_socket(path, proc)
    path.unlink()
    theirs = socket_module.socket(socket_module.AF_UNIX)
    try:
        theirs.bind(str(path))
        theirs.listen()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert stat.S_ISSOCK(path.lstat().st_mode)
    finally:
        theirs.close()
