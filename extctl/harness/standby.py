"""A standby ``extctl serve``: gRPC and Envoy's API imported ahead, arguments read later.

``extctl.harness.reload.Child`` keeps one waiting so that a reload only imports the user's
code. The first line on stdin is the JSON list of ``extctl serve`` arguments; an empty stdin
(the reloader went away) ends it. A later line ``{"placed": PATH, "identity": [DEV, INO]}``
says the reloader renamed the server's socket to PATH: when the server stops, the socket file
there is removed if it is still that one (the reloader may be gone by then: SIGKILLed, its
children are stopped by PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import json
import sys
import threading
from typing import Any

from extproc.sockets import remove_own


def main() -> int:
    import extproc

    for name in extproc.__all__:  # the slow part of a start (its names import on first use)
        getattr(extproc, name)
    from extctl.cli import cli
    from extctl.cli import serve as _serve  # noqa: F401

    line = sys.stdin.readline()
    if not line:
        return 0
    placed: dict[str, Any] = {}

    def read_placements() -> None:
        for later in sys.stdin:
            placed.update(json.loads(later))

    threading.Thread(target=read_placements, daemon=True).start()
    try:
        cli(["serve", *json.loads(line)], prog_name="extctl")
    finally:
        _remove_placed(placed)
    return 0


def _remove_placed(placed: dict[str, Any]) -> None:
    if "placed" in placed:  # not a later server's socket
        remove_own(placed["placed"], tuple(placed["identity"]))


if __name__ == "__main__":
    sys.exit(main())
