"""The sidecar's permission model, for real: ``extctl serve`` as one non-root user, Envoy as
another that shares only a group with it, on a socket directory set up the way the generated
pod spec has kubelet set it up (fsGroup: group-owned by the shared group, setgid, 0777); a
third user outside the group cannot connect.

CI runs as root, which creates the users here and removes them afterwards.
"""

from __future__ import annotations

import errno
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path

import pytest

from extctl.config import Deployment, Sidecar
from extctl.config.sidecar import container, envoy_deployment
from extctl.testing import EnvoyProcess, find_envoy
from tests.helpers.common import ROOT, http
from tests.helpers.procs import Rewrite
from tests.helpers.users import _as, _python_for

pytestmark = pytest.mark.envoy


def _connect_errno(python: str, user: str, path: str, env: dict[str, str]) -> int:
    code = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept OSError as e:\n    print(e.errno)\n"
            "else:\n    print(0)\n")
    done = subprocess.run(_as(user, python, "-c", code, path), env=env, capture_output=True,
                          text=True, timeout=60, check=True)
    return int(done.stdout)


def test_envoy_shares_only_a_group_with_the_sidecar_and_nobody_else_connects(users,
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
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base),
               "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT),
                                              sysconfig.get_paths()["purelib"],
                                              sysconfig.get_paths()["platlib"]])}
        python = _python_for(users.server, env)
        # The generated sidecar command, as the sidecar's user.
        command = container(sidecar, "tests.helpers.procs:Rewrite", [socket_path])["command"]
        assert command[:2] == ["extctl", "serve"] and "660" in command
        serve = subprocess.Popen(_as(users.server, python, "-m", "extctl", *command[1:],
                                     "--app-dir", str(ROOT)),
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)
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
                                env=env, capture_output=True, timeout=60)
        assert health.returncode == 0, health.stdout + health.stderr

        # Envoy, as the other user, from a generated config pointing at the socket.
        workdir = base / "envoy"
        workdir.mkdir()
        shutil.chown(workdir, users.envoy, users.envoy)
        wrapper = base / "envoy-as-user"
        wrapper.write_text("#!/bin/sh\nexec " + " ".join(_as(users.envoy, find_envoy()))
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

        assert _connect_errno(python, users.envoy, socket_path, env) == 0
        assert _connect_errno(python, users.outsider, socket_path, env) == errno.EACCES
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
