"""Real users for the socket permission tests (tests/extctl/config/test_socket_*.py): the
``users`` fixture (root creates them and removes them afterwards) and running a command as
one of them."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

__all__ = ["Users", "_as", "_python_for", "users"]


@dataclass
class Users:
    server: str
    envoy: str
    outsider: str
    group: str
    gid: int


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=30)


@pytest.fixture
def users() -> Iterator[Users]:
    if os.geteuid() != 0:
        raise RuntimeError("this test creates users: run it as root (CI does)")
    tag = secrets.token_hex(3)
    made = Users(f"xk-srv-{tag}", f"xk-env-{tag}", f"xk-out-{tag}", f"xk-sock-{tag}", 0)
    created_users: list[str] = []
    try:
        _run("groupadd", made.group)
        made.gid = int(subprocess.run(["getent", "group", made.group], check=True,
                                      capture_output=True, text=True, timeout=10)
                       .stdout.split(":")[2])
        for name, groups in ((made.server, [made.group]), (made.envoy, [made.group]),
                             (made.outsider, [])):
            _run("useradd", "--no-create-home", "--user-group", "--shell", "/usr/sbin/nologin",
                 *(["--groups", ",".join(groups)] if groups else []), name)
            created_users.append(name)
        yield made
    finally:
        for name in created_users:
            subprocess.run(["userdel", name], capture_output=True, timeout=30)
            subprocess.run(["groupdel", name], capture_output=True, timeout=30)
        subprocess.run(["groupdel", made.group], capture_output=True, timeout=30)


def _as(user: str, *command: str) -> list[str]:
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *command]


def _python_for(user: str, env: dict[str, str]) -> str:
    """An interpreter ``user`` can run with this environment (the venv's may live under a
    directory only root can enter; the system's of the same version then serves)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for candidate in (sys.executable, f"/usr/bin/python{version}",
                      f"/usr/local/bin/python{version}"):
        done = subprocess.run(_as(user, candidate, "-c", "import extproc, grpc"), env=env,
                              capture_output=True, timeout=60)
        if done.returncode == 0:
            return candidate
    raise RuntimeError(f"no Python {version} that {user} can run with this project's "
                       "packages")

