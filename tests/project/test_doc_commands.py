"""The ``extctl`` command lines the README and the documentation site show, in their plain code
blocks and in the text, are ones the CLI takes: each names a real command, every flag it shows
is one of that command's options, and a block's line without placeholders parses as the CLI
parses it (files it names need not exist). The ``gen`` lines also run (test_readme,
test_sidecar), and the CLI reference page is generated from the same commands (test_docs)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from extctl.cli import cli

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _plain_blocks(text: str) -> list[str]:
    """The code blocks without a language (the commands and their output), fences indented or
    not."""
    blocks, lines, fence = [], [], None
    for line in text.splitlines():
        stripped = line.strip()
        if fence is None:
            match = re.fullmatch(r"(```+)(\w*)", stripped)
            if match:
                fence = match.group(1) if not match.group(2) else "lang:" + match.group(1)
                lines = []
        elif stripped == fence.removeprefix("lang:"):
            if not fence.startswith("lang:"):
                blocks.append("\n".join(lines))
            fence = None
        else:
            lines.append(line)
    return blocks


def _command_lines() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for block in _plain_blocks(page.read_text()):
            for line in block.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line.startswith("#") or "extctl " not in line:
                    continue
                line = line[line.index("extctl "):].split("&&")[0].rstrip(" &")
                found.append((str(page.relative_to(ROOT)), line))
    return found


def _inline_commands() -> list[tuple[str, str]]:
    return [(str(page.relative_to(ROOT)), span) for page in PAGES
            for span in re.findall(r"(?<!`)`(extctl [^`]+)`(?!`)", page.read_text())]


LINES = _command_lines()
INLINE = _inline_commands()


def _resolve(words: list[str]) -> tuple[list[str], click.Command]:
    """The command path (``gen gateway``) and the command the words name."""
    command: click.Command = cli
    path: list[str] = []
    ctx = click.Context(cli, info_name="extctl")
    for word in words:
        if not isinstance(command, click.Group):
            break
        sub = command.get_command(ctx, word)
        if sub is None:
            break
        command, path = sub, [*path, word]
    return path, command


def _flags(command: click.Command) -> set[str]:
    return {"--help", "-h"} | {flag for param in command.params
                               for flag in (*param.opts, *param.secondary_opts)}


def _shown_flags(line: str) -> set[str]:
    return {word.split("=")[0] for word in re.findall(r"(?<![\w-])--?[a-zA-Z][\w-]*", line)}


def test_the_pages_show_commands():
    assert len(LINES) >= 25 and len(INLINE) >= 40
    assert {line.split()[1] for _, line in LINES} >= {"serve", "dev", "new", "gen", "push",
                                                       "pull", "check", "health", "doctor"}


@pytest.mark.parametrize(("page", "line"), LINES, ids=[f"{p}:{line[:50]}" for p, line in LINES])
def test_each_command_line_is_one_the_cli_takes(page, line):
    words = shlex.split(re.sub(r"<[^>]+>", "a" * 64, line), comments=True)
    assert words[0] == "extctl"
    path, command = _resolve(words[1:])
    assert path, f"{page}: no such command: {line}"
    shown = _shown_flags(line)
    assert shown <= _flags(command), \
        f"{page}: {' '.join(path)} has no {sorted(shown - _flags(command))}: {line}"
    if re.search(r"\[|\||\.\.\.|\b[A-Z]{2,}\b", " ".join(words)):
        return  # a synopsis: its flags are checked, its placeholders are not values
    args = words[1 + len(path):]
    try:
        command.make_context(" ".join(["extctl", *path]), args)
    except click.BadParameter as exc:  # a file the line names, not on this machine
        assert "does not exist" in exc.format_message(), f"{page}: {line}: {exc}"


@pytest.mark.parametrize(("page", "span"), INLINE, ids=[f"{p}:{s[:50]}" for p, s in INLINE])
def test_each_command_in_the_text_is_one_the_cli_has(page, span):
    words = span.split()
    if "|" in words[1]:  # `extctl push|pull|inspect`: each a command
        for name in words[1].split("|"):
            assert _resolve([name])[0] == [name], f"{page}: no such command: {name}"
        return
    path, command = _resolve(words[1:])
    shown = _shown_flags(span)
    assert path or shown <= {"--help", "-h", "--version"}, f"{page}: no such command: {span}"
    assert shown <= _flags(command) | {"--version"}, \
        f"{page}: {' '.join(path)} has no {sorted(shown - _flags(command))}: {span}"


def test_the_local_registry_commands_run_as_shown(tmp_path, monkeypatch, wat_template_module):
    """The blocks that push to, check and pull from ``extctl registry`` on 127.0.0.1:5000 run
    as shown, against the same registry on a free port (``LocalRegistry``, what ``extctl
    registry`` serves), with a real module as plugin.wasm and build/filter.wasm."""
    from click.testing import CliRunner

    from extctl.testing import LocalRegistry

    blocks = [(str(page.relative_to(ROOT)), block) for page in PAGES
              for block in _plain_blocks(page.read_text()) if "127.0.0.1:5000" in block]
    assert {page for page, _ in blocks} >= {"docs/how-to/registries.md",
                                            "docs/tutorial/first-wasm-filter.md"}
    module = wat_template_module.read_bytes()
    (tmp_path / "build").mkdir()
    (tmp_path / "plugin.wasm").write_bytes(module)
    (tmp_path / "build" / "filter.wasm").write_bytes(module)
    monkeypatch.chdir(tmp_path)
    ran = []
    with LocalRegistry() as registry:
        for page, block in blocks:
            for line in block.splitlines():
                words = shlex.split(line.replace("127.0.0.1:5000", registry.host), comments=True)
                if words[:2] == ["extctl", "registry"]:
                    continue  # the registry this test started instead
                assert words[0] == "extctl", (page, line)
                result = CliRunner().invoke(cli, words[1:], catch_exceptions=False)
                assert result.exit_code == 0, (page, line, result.output)
                if words[1] == "check":
                    assert "ACCEPTED" in result.output, result.output
                ran.append(words[1])
    assert sorted(set(ran)) == ["check", "pull", "push"]
    assert (tmp_path / "back.wasm").read_bytes() == module
