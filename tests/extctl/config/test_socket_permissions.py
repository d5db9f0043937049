"""The sidecar's permission model, for real: ``extctl serve`` as one non-root user, Envoy as
another that shares only a group with it, on a socket directory set up the way the generated
pod spec has kubelet set it up (fsGroup: group-owned by the shared group, setgid, 0777); a
third user outside the group cannot connect.

CI runs as root, which creates the users here and removes them afterwards. The users run
the checkout's code from ``shared`` (tests/helpers/users.py), so the checkout may lie where
they cannot enter: the last test runs these from such a clone.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from extctl.config import Deployment, Sidecar
from extctl.config.sidecar import container, envoy_deployment
from extctl.testing import EnvoyProcess
from tests.helpers.checkout import copy_checkout
from tests.helpers.common import http
from tests.helpers.procs import Rewrite
from tests.helpers.users import _as, _python_for

pytestmark = pytest.mark.envoy


def _connect_errno(python: str, user: str, path: str, env: dict[str, str], cwd: Path) -> int:
    code = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.errno)\n"
            "else:\n    print(0)\n")
    done = subprocess.run(_as(user, python, "-c", code, path), env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout)


def test_envoy_shares_only_a_group_with_the_sidecar_and_nobody_else_connects(users, shared,
                                                                             monkeypatch):
    base = Path(tempfile.mkdtemp(prefix="xk-perm-", dir="/tmp"))
    base.chmod(0o755)
    serve: subprocess.Popen[bytes] | None = None
    try:
        socket_dir = base / "run"  # the emptyDir
        socket_path = str(socket_dir / "extproc.sock")
        sidecar = Sidecar("registry.example.com/redact:1", socket_group=users.gid)
        pod = envoy_deployment(sidecar, "tests.helpers.procs:Rewrite", [socket_path])
        assert pod["pod"]["securityContext"] == {"fsGroup": users.gid}
        # What kubelet does to an emptyDir for fsGroup: group-owned, setgid, 0777.
        socket_dir.mkdir()
        os.chown(socket_dir, 0, pod["pod"]["securityContext"]["fsGroup"])
        socket_dir.chmod(0o2777)
        env = shared.env(base)
        python = _python_for(users.server, env)
        # The generated sidecar command, as the sidecar's user.
        command = container(sidecar, "tests.helpers.procs:Rewrite", [socket_path])["command"]
        assert command[:2] == ["extctl", "serve"] and "660" in command
        serve = subprocess.Popen(_as(users.server, python, "-m", "extctl", *command[1:],
                                     "--app-dir", str(shared.root)),
                                 env=env, cwd=base, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while True:
            if serve.poll() is not None:
                assert serve.stdout is not None
                raise AssertionError(f"serve exited: {serve.stdout.read().decode()}")
            if os.path.exists(socket_path) and \
                    stat.S_IMODE(os.stat(socket_path).st_mode) == 0o660:
                break
            assert time.monotonic() < deadline, "the socket never appeared with mode 660"
            time.sleep(0.1)
        info = os.stat(socket_path)
        assert stat.S_ISSOCK(info.st_mode)
        assert info.st_gid == users.gid  # from the setgid directory, not the user's group
        # The probe, as the sidecar's user.
        probe = container(sidecar, "tests.helpers.procs:Rewrite", [socket_path])["startupProbe"]
        health = subprocess.run(_as(users.server, python, "-m", "extctl",
                                    *probe["exec"]["command"][1:]),
                                env=env, cwd=base, capture_output=True, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr

        # Envoy, as the other user, from a generated config pointing at the socket.
        workdir = base / "envoy"
        workdir.mkdir()
        shutil.chown(workdir, users.envoy, users.envoy)
        wrapper = base / "envoy-as-user"
        wrapper.write_text("#!/bin/sh\nexec " + " ".join(_as(users.envoy, shared.envoy))
                           + ' "$@"\n')
        wrapper.chmod(0o755)
        monkeypatch.setenv("EXTCTL_ENVOY_BINARY", str(wrapper))
        bootstrap = Deployment(Rewrite, addresses=[socket_path]).envoy_bootstrap()
        with EnvoyProcess(bootstrap, workdir) as envoy:
            assert envoy.process is not None
            owner = os.stat(f"/proc/{envoy.process.pid}").st_uid
            replies = [http(envoy.port, "/") for _ in range(3)]
        assert owner == pwd.getpwnam(users.envoy).pw_uid
        for reply in replies:
            assert reply.status == 200
            assert reply.headers["x-processed-by"].startswith("extkit-")

        assert _connect_errno(python, users.envoy, socket_path, env, base) == 0
        assert _connect_errno(python, users.outsider, socket_path, env, base) == errno.EACCES
    finally:
        if serve is not None:
            if serve.poll() is None:
                os.killpg(serve.pid, signal.SIGTERM)
            try:
                serve.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait()
            if serve.stdout is not None:
                serve.stdout.close()
        shutil.rmtree(base, ignore_errors=True)


def test_the_tests_run_as_other_users_pass_from_a_clone_only_root_can_enter(tmp_path):
    """A clone in a ``mktemp -d`` folder (0700), its tests run with the project's venv: the
    tests that run code as other users pass there too."""
    private = Path(tempfile.mkdtemp(prefix="xk-private-", dir="/tmp"))
    try:
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        clone = copy_checkout(private / "clone")
        # The clone's venv: its packages are where the clone is (as setup.sh makes it there).
        (clone / ".venv").symlink_to(sys.prefix)
        done = subprocess.run(
            [str(clone / ".venv" / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider",
             "-q", "tests/extctl/config/test_socket_permissions.py::"
             "test_envoy_shares_only_a_group_with_the_sidecar_and_nobody_else_connects",
             "tests/extctl/config/test_socket_faults.py::"
             "test_a_stale_socket_of_another_user_in_a_sticky_directory_exits_3_with_one_line"],
            cwd=clone, capture_output=True, text=True, timeout=300,
            env={k: v for k, v in os.environ.items() if not k.startswith("PYTEST")})
        assert done.returncode == 0, done.stdout + done.stderr
        assert "4 passed" in done.stdout, done.stdout
    finally:
        shutil.rmtree(private, ignore_errors=True)
