"""The code of the README and of the documentation site (docs/**/*.md) runs as a user pastes
it: each Python block in a fresh directory, run by the venv's Python (a block with tests by
pytest, with no configuration of ours), with the README's ``Redact`` class above it when it
uses one, and the module files it names."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import wasmtime

import extproc
from tests.helpers.wasm_modules import callout_module

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").rglob("*.md"))


def _python_blocks(text: str) -> list[str]:
    return [textwrap.dedent(block) for block in re.findall(r"```python\n(.*?)```", text, re.S)]


BLOCKS = _python_blocks(README)
# (test id, block): the README's, then each page's, in order.
ALL_BLOCKS = [(f"README-{i}", block) for i, block in enumerate(BLOCKS)] + [
    (f"{page.relative_to(ROOT / 'docs').with_suffix('')}-{i}".replace("/", "."), block)
    for page in DOCS for i, block in enumerate(_python_blocks(page.read_text()))]
WAT = Path(__file__).resolve().parents[1] / "helpers" / "wat"


# The module a block names as build/filter.wasm, by a line of the block: what a user of
# that block has built.
FILTERS = {
    'plugin_configuration="tagged"': "template",
    'configuration="tagged"': "template",
    '"checkers": check': "callout",
    '"grpc": Chat()': "grpc_stream",
}


@pytest.mark.parametrize("block", [block for _, block in ALL_BLOCKS],
                         ids=[name for name, _ in ALL_BLOCKS])
def test_every_python_block_runs_as_pasted(block, tmp_path, wat_template_module):
    if "Redact" in block and "class Redact" not in block:
        block = BLOCKS[0] + "\n\n" + block  # the README's processor, as the reader has it
    filters = {FILTERS[line] for line in FILTERS if line in block}
    assert len(filters) <= 1, filters
    if filters:
        (tmp_path / "build").mkdir()
        kind = filters.pop()
        data = (wat_template_module.read_bytes() if kind == "template" else
                callout_module() if kind == "callout" else
                bytes(wasmtime.wat2wasm((WAT / f"{kind}.wat").read_text())))
        (tmp_path / "build" / "filter.wasm").write_bytes(data)
    tests = re.findall(r"^(?:async )?def (test_\w+)", block, re.M)
    name = "test_block.py" if tests else "block.py"
    (tmp_path / name).write_text(block)
    command = ([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name]
               if tests else [sys.executable, name])
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    if tests:  # each ran and passed: none skipped (an async test pytest cannot run is)
        summary = done.stdout.strip().splitlines()[-1]
        assert " passed" in summary and "skipped" not in summary, done.stdout
        assert int(summary.split()[0]) >= len(tests), done.stdout


def test_the_docs_have_python_blocks_and_the_readme_is_a_front_page():
    pages = {page.relative_to(ROOT / "docs").as_posix() for page in DOCS}
    assert {"index.md", "tutorial/first-processor.md", "reference/cli.md"} <= pages
    assert len(ALL_BLOCKS) - len(BLOCKS) >= 10  # every block the README had, and more
    assert len(README.splitlines()) <= 200
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", README)
    assert len(links) >= 15
    for target in links:  # the README's links into the site, read on a forge
        assert (ROOT / target).is_file(), target


def test_readme_processor_is_at_most_15_lines_and_works():
    processor_code = BLOCKS[0]
    assert len(processor_code.strip().splitlines()) <= 15
    namespace: dict[str, object] = {}
    exec(processor_code, namespace)
    redact = namespace["Redact"]
    assert isinstance(redact, type) and issubclass(redact, extproc.Processor)
    mode = redact.processing_mode()
    assert mode.phases == ("request_headers", "response_body")


def test_readme_gen_commands_run(tmp_path, wat_module, monkeypatch):
    """The `extctl gen` lines of the docs' "Generate configs", with the README's Redact class
    as app:Redact."""
    import shlex

    from click.testing import CliRunner

    from extctl.cli import cli

    page = (ROOT / "docs" / "how-to" / "generate-configs.md").read_text()
    section = page[page.index("## Generated configuration"):]
    block = re.search(r"```\n(.*?)```", section, re.S)
    assert block is not None
    commands = block.group(1).replace("\\\n", " ").replace("<digest from push>", "a" * 64)
    (tmp_path / "app.py").write_text("import extproc\n" + BLOCKS[0])
    (tmp_path / "plugin.wasm").write_bytes(wat_module.read_bytes())
    monkeypatch.chdir(tmp_path)
    ran = []
    for line in commands.strip().splitlines():
        args = shlex.split(line)
        assert args[:2] == ["extctl", "gen"]
        result = CliRunner().invoke(cli, args[1:])
        assert result.exit_code == 0, (line, result.output)
        ran.append(args[2])
    assert ran == ["gateway", "envoy"]
