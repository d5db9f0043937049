"""The README's code runs as shown."""

from __future__ import annotations

import re
from pathlib import Path

import extproc

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_readme_processor_is_at_most_15_lines_and_works():
    processor_code = BLOCKS[0]
    assert len(processor_code.strip().splitlines()) <= 15
    namespace: dict[str, object] = {}
    exec(processor_code, namespace)
    redact = namespace["Redact"]
    assert isinstance(redact, type) and issubclass(redact, extproc.Processor)
    mode = redact.processing_mode()
    assert mode.phases == ("request_headers", "response_body")


async def test_readme_unit_test_example_passes():
    namespace: dict[str, object] = {}
    exec(BLOCKS[0], namespace)
    exec(BLOCKS[1], namespace)
    await namespace["test_redacts"]()  # type: ignore[operator]
