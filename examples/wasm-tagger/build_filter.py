"""Build filter.wat into build/filter.wasm: `python build_filter.py`."""

from __future__ import annotations

from pathlib import Path

import wasmtime

ROOT = Path(__file__).resolve().parent
OUTPUT = ROOT / "build" / "filter.wasm"


def build() -> Path:
    OUTPUT.parent.mkdir(exist_ok=True)
    OUTPUT.write_bytes(wasmtime.wat2wasm((ROOT / "filter.wat").read_text()))
    return OUTPUT


if __name__ == "__main__":
    print(build())
