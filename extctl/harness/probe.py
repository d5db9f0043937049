"""``python -m extctl.harness.probe MODULE:CLASS APP_DIR``: the class's FilterSpec as JSON.

Run in a fresh interpreter by ``extctl dev --reload``, so the spec always comes from the code
on disk now; an import error is printed as Python prints it (exit 1).
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    spec_text, app_dir = argv
    from extproc import FilterSpec, import_processor

    cls = import_processor(spec_text, app_dir)
    print(json.dumps(FilterSpec.of(cls).to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
