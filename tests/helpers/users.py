"""Real users for the socket permission tests (tests/extctl/config/test_socket_*.py): the
``users`` fixture (root creates them and removes them afterwards), running a command as one of
them, and ``shared``: what those users run (this checkout's code, this venv's packages, Envoy)
laid where they can reach it, wherever the checkout is (a clone in a ``mktemp -d`` folder or a
home directory only root can enter)."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.common import ROOT

__all__ = ["Shared", "Users", "_as", "_python_for", "shared", "users"]


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
    """An interpreter ``user`` can run with ``env`` (a :class:`Shared` one): the venv's, or,
    when it lives under a directory only root can enter (pyenv's under /root), the system's
    of the same version."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    tried = []
    for candidate in (sys.executable, f"/usr/bin/python{version}",
                      f"/usr/local/bin/python{version}"):
        done = subprocess.run(_as(user, candidate, "-c", "import extproc, grpc"), env=env,
                              cwd="/", capture_output=True, text=True, timeout=60)
        if done.returncode == 0:
            return candidate
        tried.append(f"{candidate}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    raise RuntimeError(f"no Python {version} that {user} can run with this project's "
                       f"packages ({'; '.join(tried)})")


@dataclass(frozen=True)
class Shared:
    """This checkout's code, this venv's packages and Envoy, as other users reach them."""

    base: Path
    root: Path
    """The checkout's packages and tests/: for ``PYTHONPATH`` and ``--app-dir``."""
    sites: tuple[Path, ...]
    """This venv's site-packages (purelib, and platlib where it differs)."""
    envoy: str

    def env(self, home: Path) -> dict[str, str]:
        """The environment of a command run as another user."""
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
                "PYTHONNOUSERSITE": "1", "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONPATH": os.pathsep.join(map(str, (self.root, *self.sites)))}


_CHECKOUT_PARTS = ("extproc", "extctl", "wasm", "registry", "tests")


def _lay(source: Path, target: Path) -> None:
    """``source``'s tree at ``target``, readable by everyone: hard links where the file is
    (cheap, no copy of Envoy's 100 MB), copies where it is not or links cannot cross."""
    for directory, subdirectories, files in os.walk(source):
        subdirectories[:] = [d for d in subdirectories if d != "__pycache__"]
        into = target / Path(directory).relative_to(source)
        into.mkdir(parents=True, exist_ok=True)
        into.chmod(0o755)
        for name in files:
            path = Path(directory, name)
            if path.is_symlink():
                (into / name).symlink_to(os.readlink(path))
                continue
            readable = path.stat().st_mode & stat.S_IROTH
            try:
                if not readable:
                    raise PermissionError
                os.link(path, into / name)
            except OSError as exc:
                if not isinstance(exc, PermissionError) and exc.errno != errno.EXDEV:
                    raise
                shutil.copy2(path, into / name)
                (into / name).chmod((into / name).stat().st_mode | 0o444)


@pytest.fixture(scope="session")
def shared() -> Iterator[Shared]:
    """What the other users run, under a new /tmp directory everyone may enter: the users
    cannot reach the checkout itself when it lies in a directory only root may enter."""
    from extctl.testing import find_envoy

    base = Path(tempfile.mkdtemp(prefix="xk-shared-", dir="/tmp"))
    try:
        base.chmod(0o755)
        for part in _CHECKOUT_PARTS:
            _lay(ROOT / part, base / "checkout" / part)
        paths = dict.fromkeys(Path(sysconfig.get_paths()[key]).resolve()
                              for key in ("purelib", "platlib"))
        sites = tuple(base / f"site-{i}" for i in range(len(paths)))
        envoy = Path(find_envoy()).resolve()
        laid = None
        for path, site in zip(paths, sites, strict=True):
            _lay(path, site)
            if envoy.is_relative_to(path):
                laid = site / envoy.relative_to(path)
        if laid is None:
            (base / "bin").mkdir(mode=0o755)
            laid = base / "bin" / "envoy"
            shutil.copy2(envoy, laid)
        yield Shared(base, base / "checkout", sites, str(laid))
    finally:
        shutil.rmtree(base, ignore_errors=True)

