"""A standby ``extctl serve``: gRPC and Envoy's API imported ahead, arguments read later.

``extctl.harness.reload.Child`` keeps one waiting so that a reload only imports the user's
code. The first line on stdin is the JSON list of ``extctl serve`` arguments; an empty stdin
(the reloader went away) ends it.
"""

from __future__ import annotations

import json
import sys


def main() -> int:
    import extproc

    for name in extproc.__all__:  # the slow part of a start (its names import on first use)
        getattr(extproc, name)
    from extctl.cli import cli
    from extctl.cli import serve as _serve  # noqa: F401

    line = sys.stdin.readline()
    if not line:
        return 0
    cli(["serve", *json.loads(line)], prog_name="extctl")
    return 0


if __name__ == "__main__":
    sys.exit(main())
