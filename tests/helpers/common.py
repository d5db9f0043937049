"""What many test folders share: the checkout's root, the WAT modules, the real-Envoy helpers
from ``extctl.testing``, and waiting for a server's socket."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any

from extctl.testing import Reply, Stack, http, stack

__all__ = ["ROOT", "WAT", "Reply", "Stack", "_descendants", "alive", "http", "process_name",
           "stack", "wait_for_line", "wait_for_socket"]

ROOT = Path(__file__).resolve().parents[2]
WAT = ROOT / "tests" / "helpers" / "wat"


def wait_for_socket(path: Path, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stderr.read()}"
                                 if proc.stderr else "server exited")
        time.sleep(0.05)
    raise AssertionError(f"{path} did not appear within {timeout}s")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, reaped soon, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def process_name(pid: int) -> str | None:
    """The program ``pid`` runs (its comm), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/comm") as comm:
            return comm.read().strip()
    except FileNotFoundError:
        return None


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def wait_for_line(proc, pattern: str, timeout: float = 30,
                   view: bool = False) -> tuple[re.Match[str], list[str]]:
    """The first line matching ``pattern`` and the lines read up to it: from stderr (dev's
    banner and logs), or with ``view`` from stdout (the live view, all stdout carries)."""
    stream = proc.stdout if view else proc.stderr
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        match = re.search(pattern, line)
        if match:
            return match, lines
    raise AssertionError(f"no line matching {pattern!r}; got {lines} / "
                         f"{proc.stderr.read() if view and proc.poll() is not None else ''}")


FAILING_START = '''
    @classmethod
    async def on_startup(cls):
        raise RuntimeError("no key yet")
'''
"""A Processor class body's on_startup that fails (appended to a class in a test's app)."""


def gen(*args: str) -> Any:
    """``extctl gen ARGS`` through click's runner (its result: exit_code, output)."""
    from click.testing import CliRunner

    from extctl.cli import cli

    return CliRunner().invoke(cli, ["gen", *args])


def memory(pid: int) -> dict[str, int]:
    """A process's VmRSS and VmHWM (its peak), in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    return values
