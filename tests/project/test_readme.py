"""The README's code runs as shown."""

from __future__ import annotations

import re
from pathlib import Path

import extproc

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
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


def test_readme_gen_commands_run(tmp_path, wat_module, monkeypatch):
    """The `extctl gen` lines of the README, with its Redact class as app:Redact."""
    import shlex

    from click.testing import CliRunner

    from extctl.cli import cli

    section = README[README.index("## Generated configuration"):]
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


def test_readme_envoy_stack_example_passes():
    from extctl.testing import envoy_stack

    namespace: dict[str, object] = {}
    exec(BLOCKS[0], namespace)
    block = next(b for b in BLOCKS if "def test_through_envoy(envoy_stack)" in b)
    exec(block, namespace)
    namespace["test_through_envoy"](envoy_stack)  # type: ignore[operator]


def test_readme_emulator_example_passes(tmp_path, wat_template_module, monkeypatch):
    block = next(b for b in BLOCKS if "def test_tags_and_denies" in b)
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "filter.wasm").write_bytes(wat_template_module.read_bytes())
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(block, namespace)
    namespace["test_tags_and_denies"]()  # type: ignore[operator]


def test_readme_one_vocabulary_example_passes_as_pasted(tmp_path):
    """The block as a user pastes it: the README's processor and test in a fresh directory,
    run by pytest with no configuration of ours (its plugin loads by itself)."""
    import subprocess
    import sys

    block = next(b for b in BLOCKS if "def test_redacts_both_ways" in b)
    (tmp_path / "test_redact.py").write_text(BLOCKS[0] + "\n\n" + block)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_redact.py"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
