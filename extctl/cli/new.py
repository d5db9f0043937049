"""``extctl new extproc|wasm NAME``: a project that passes its own tests on the first run."""

from __future__ import annotations

import json

import click

from ..scaffold import WASM_LANGUAGES, new_project
from ..scaffold.source import ExtkitSource
from . import options


def _create(template: str, name: str, directory: str, output: str) -> None:
    source = ExtkitSource.running()
    path = new_project(template, name, directory, source=source)
    if source.missing:
        click.echo(f"warning: envoy-extkit was installed from {source.location}, which is no "
                   "longer there: the README's install command needs it (or an index that has "
                   "envoy-extkit)", err=True)
    if output == "json":
        files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
        click.echo(json.dumps({"path": str(path), "template": template, "files": files},
                              indent=2))
        return
    click.echo(f"created {path}")
    click.echo(f"next: cd {path} && cat README.md")


_OUTPUT = options.output


@click.group()
def new() -> None:
    """Start a project: an ext_proc processor or a proxy-wasm filter, with tests and configs.

    \b
    Example:
      extctl new extproc tenant-guard
      extctl new wasm tagger --lang wat
    """


@new.command()
@click.argument("name")
@click.option("--directory", "-C", default=".", show_default=True,
              help="Where to create the project directory NAME.")
@_OUTPUT
def extproc(name: str, directory: str, output: str) -> None:
    """An ext_proc processor: package, unit tests, an end-to-end test through a real Envoy,
    generated envoy-configs/, a Dockerfile for the sidecar, a README whose install command
    takes envoy-extkit from where this one was installed (a checkout, a wheel, an index).

    \b
    Example:
      extctl new extproc tenant-guard && cd tenant-guard && cat README.md
    """
    _create("extproc", name, directory, output)


@new.command()
@click.argument("name")
@click.option("--lang", type=click.Choice(WASM_LANGUAGES), default="wat", show_default=True,
              help="wat: plain WebAssembly text, no toolchain; assemblyscript: the "
                   "@solo-io/proxy-runtime SDK (needs Node.js and npm).")
@click.option("--directory", "-C", default=".", show_default=True,
              help="Where to create the project directory NAME.")
@_OUTPUT
def wasm(name: str, lang: str, directory: str, output: str) -> None:
    """A proxy-wasm filter: source, build command, a test that runs the built module in a real
    Envoy, the push command and the EnvoyExtensionPolicy to ship it.

    \b
    Example:
      extctl new wasm tagger --lang wat && cd tagger && cat README.md
      extctl new wasm tagger --lang assemblyscript
    """
    _create(f"wasm-{lang}", name, directory, output)
