"""``extctl new``: each template, generated into a temporary directory, is set up and tested
as its README says, in a new venv (a real Envoy included; the AssemblyScript one builds with
npm). pip runs without the network: it is pointed at wheels of this environment's packages
(``tests/helpers/wheelhouse.py``), envoy-extkit left out, so envoy-extkit must come from
where the generated README's install command says."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from extctl.cli import cli
from extctl.scaffold import new_project
from extctl.scaffold.source import ExtkitSource
from tests.helpers.checkout import copy_checkout
from tests.helpers.common import ROOT
from tests.helpers.crds import validate
from tests.helpers.wheelhouse import wheelhouse


@pytest.fixture(scope="module")
def user_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A user's shell, its pip pointed at local wheels instead of the index, and ``python3``
    this interpreter (the wheels are built for it)."""
    wheels = wheelhouse(tmp_path_factory.mktemp("wheels"), ["envoy-extkit[test]", "setuptools"],
                        leave_out=["envoy-extkit"])
    bin_dir = tmp_path_factory.mktemp("bin")
    (bin_dir / "python3").symlink_to(os.path.realpath(sys.executable))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST", "PYTHON", "PIP_", "VIRTUAL_ENV"))}
    return {**env, "PATH": os.pathsep.join([str(bin_dir), env.get("PATH", "/usr/bin:/bin")]),
            "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels),
            "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _new(*args: str) -> object:
    return CliRunner().invoke(cli, ["new", *args])


def readme_commands(project: Path, section: str) -> list[str]:
    """The commands of the README's first code block under ``## SECTION``, comments cut."""
    text = (project / "README.md").read_text()
    block = re.search(rf"^## {re.escape(section)}\n.*?^```\n(.*?)^```", text,
                      re.MULTILINE | re.DOTALL)
    assert block, f"no code block under '## {section}' in README.md"
    return [line.split("  #")[0].strip() for line in block.group(1).splitlines()
            if line.strip()]


def _follow_readme(project: Path, section: str, env: dict[str, str]) -> str:
    """Run the README's commands one by one in the project, as a user pastes them; each must
    succeed. The output of the last (its tests)."""
    done = None
    for command in readme_commands(project, section):
        done = subprocess.run(["bash", "-c", command], cwd=project, env=env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
    assert done is not None
    return done.stdout


def _passed(output: str) -> int:
    match = re.search(r"(\d+) passed", output)
    assert match, output
    assert not re.search(r"\d+ (failed|skipped|errors?)\b", output), output
    return int(match.group(1))


def _installed_extkit(project: Path) -> dict[str, object]:
    """Where the project's venv got envoy-extkit (PEP 610)."""
    info = next((project / ".venv").glob("lib/python*/site-packages/envoy_extkit-*.dist-info"))
    return dict(json.loads((info / "direct_url.json").read_text()))


def _lint(project: Path) -> None:
    """The generated code passes ruff with the rules its pyproject.toml sets."""
    ruff = Path(sys.executable).parent / "ruff"
    check = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=project,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_new_extproc_project_installs_by_its_readme_in_a_new_venv_and_passes_its_tests(
        tmp_path, user_env):
    result = _new("extproc", "tenant-guard", "-C", str(tmp_path))
    assert result.exit_code == 0, result.output
    project = tmp_path / "tenant-guard"
    assert (project / "tenant_guard" / "processor.py").exists()
    gateway = list(yaml.safe_load_all((project / "envoy-configs" / "gateway.yaml").read_text()))
    assert [d["kind"] for d in gateway] == ["EnvoyExtensionPolicy", "Backend", "EnvoyProxy"]
    assert gateway[0]["spec"]["extProc"][0]["processingMode"] == {"request": {}, "response": {}}
    for doc in gateway[:3]:
        validate(doc)
    (sidecar,) = gateway[2]["spec"]["provider"]["kubernetes"]["envoyDeployment"][
        "initContainers"]
    assert sidecar["command"] == ["extctl", "serve", "tenant_guard.processor:TenantGuard",
                                  "--uds", "/var/run/extproc/extproc.sock", "--workers", "2",
                                  "--socket-mode", "660"]
    dockerfile = (project / "Dockerfile").read_text()
    assert "USER 10001" in dockerfile and "666" not in dockerfile
    assert (project / ".gitignore").exists()
    # 2 unit tests, 1 through Envoy, 3 on the generated configs and the image's command.
    assert _passed(_follow_readme(project, "Set up and test", user_env)) == 6
    # this checkout, which runs these tests (installed editable, as setup.sh does)
    assert _installed_extkit(project) == {"url": ROOT.as_uri(), "dir_info": {"editable": True}}
    _lint(project)


@pytest.mark.parametrize("lang", ["wat", "assemblyscript"])
def test_new_wasm_project_installs_builds_and_passes_its_tests_by_its_readme(tmp_path, user_env,
                                                                            lang):
    if lang == "assemblyscript" and shutil.which("npm") is None:
        raise AssertionError("npm is missing: the AssemblyScript template needs Node.js and npm")
    result = _new("wasm", "tagger", "--lang", lang, "-C", str(tmp_path))
    assert result.exit_code == 0, result.output
    project = tmp_path / "tagger"
    assert not (project / "build").exists()
    # 2 in the emulator, 3 through Envoy, 1 comparing the emulator with Envoy, 2 on the configs
    assert _passed(_follow_readme(project, "Build and test", user_env)) == 8
    _lint(project)
    module = project / "build" / "filter.wasm"
    assert module.read_bytes().startswith(b"\0asm")  # its tests built it
    policy = next(yaml.safe_load_all((project / "envoy-configs" / "gateway.yaml").read_text()))
    assert policy["spec"]["wasm"][0]["code"]["image"]["url"] == \
        "registry.example.com/filters/tagger:v1"


def _run(command: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
    return done.stdout


def test_a_project_made_by_envoy_extkit_from_a_wheel_installs_that_wheel_by_its_readme(
        tmp_path, user_env):
    """Someone was handed envoy-extkit's wheel, not a checkout: the project they make installs
    it from that file."""
    source = copy_checkout(tmp_path / "checkout")  # a copy: the build leaves build/ behind
    _run(["python3", "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"),
          str(source)], user_env)
    (wheel,) = (tmp_path / "dist").glob("envoy_extkit-*.whl")
    tools = tmp_path / "tools"
    _run(["python3", "-m", "venv", str(tools)], user_env)
    _run([str(tools / "bin" / "pip"), "install", "-q", str(wheel)], user_env)
    _run([str(tools / "bin" / "extctl"), "new", "extproc", "from-wheel", "-C", str(tmp_path)],
         user_env, tmp_path)
    project = tmp_path / "from-wheel"
    assert readme_commands(project, "Set up and test")[0].endswith(
        f"pip install -e '.[dev]' {wheel}")
    assert _passed(_follow_readme(project, "Set up and test", user_env)) == 6
    assert _installed_extkit(project)["url"] == wheel.as_uri()


@pytest.mark.parametrize(("direct_url", "kind", "arguments"), [
    (None, "index", ""),
    ({"url": "file:///src/envoy-extkit", "dir_info": {"editable": True}}, "directory",
     "-e /src/envoy-extkit"),
    ({"url": "file:///src/my%20kit", "dir_info": {}}, "directory", "'/src/my kit'"),
    ({"url": "file:///w/envoy_extkit-0.1.0-py3-none-any.whl", "archive_info": {}}, "archive",
     "/w/envoy_extkit-0.1.0-py3-none-any.whl"),
    ({"url": "https://files.example.com/envoy_extkit-0.1.0.tar.gz",
      "archive_info": {"hashes": {"sha256": "ab" * 32}}}, "archive",
     f"'envoy-extkit @ https://files.example.com/envoy_extkit-0.1.0.tar.gz#sha256={'ab' * 32}'"),
    ({"url": "https://git.example.com/team/envoy-extkit.git", "subdirectory": "py",
      "vcs_info": {"vcs": "git", "commit_id": "c0ffee" * 6 + "beef", "requested_revision": "v1"}},
     "vcs", "'envoy-extkit @ git+https://git.example.com/team/envoy-extkit.git@"
     + "c0ffee" * 6 + "beef#subdirectory=py'"),
])
def test_each_way_envoy_extkit_is_installed_gives_the_readme_its_install_argument(
        tmp_path, direct_url, kind, arguments):
    source = ExtkitSource.from_direct_url(direct_url)
    assert (source.kind, source.pip_arguments) == (kind, arguments)
    project = new_project("extproc", "made", tmp_path, source=source)
    (install, _) = readme_commands(project, "Set up and test")
    assert install == ("python3 -m venv .venv && .venv/bin/pip install -e '.[dev]'"
                       + (f" {arguments}" if arguments else ""))
    readme = " ".join((project / "README.md").read_text().split())
    assert "Where envoy-extkit comes from:" in readme
    if arguments:
        assert f"`{arguments}`" in readme and "drop that argument" in readme
        assert "pip wheel --no-deps -w wheels" in readme  # for the image


def test_this_checkout_is_where_envoy_extkit_comes_from_when_it_runs_from_one():
    assert ExtkitSource.running() == ExtkitSource("directory", str(ROOT), editable=True)


def test_new_warns_when_the_wheel_envoy_extkit_came_from_is_gone(tmp_path, monkeypatch):
    gone = ExtkitSource("archive", str(tmp_path / "envoy_extkit-0.1.0-py3-none-any.whl"))
    monkeypatch.setattr(ExtkitSource, "running", classmethod(lambda cls: gone))
    result = CliRunner().invoke(cli, ["new", "extproc", "orphan", "-C", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "warning: envoy-extkit was installed from" in result.stderr
    assert "no longer there" in result.stderr


def test_new_refuses_bad_names_and_existing_directories_with_exit_2(tmp_path):
    bad = _new("extproc", "Bad_Name", "-C", str(tmp_path))
    assert bad.exit_code == 2 and "project name 'Bad_Name'" in bad.output
    for name, why in (("registry", "would shadow it"), ("email", "would shadow it"),
                      ("import", "is a Python keyword")):
        clash = _new("extproc", name, "-C", str(tmp_path))
        assert clash.exit_code == 2 and why in clash.output, clash.output
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    taken = _new("wasm", "taken", "-C", str(tmp_path))
    assert taken.exit_code == 2 and "already exists" in taken.output
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_failing_template_leaves_nothing_behind(tmp_path, monkeypatch):
    from extctl import scaffold

    def broken(project: Path, names: scaffold.ProjectNames) -> None:
        raise scaffold.ScaffoldError("generating the project's envoy-configs failed: boom")

    # A template bug cannot be produced with a good template: this one is simulated.
    monkeypatch.setattr(scaffold, "_generate_configs", broken)
    result = _new("extproc", "half", "-C", str(tmp_path))
    assert result.exit_code == 1 and "boom" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_name_with_underscores_gives_a_dash_distribution_and_an_underscore_package(tmp_path):
    made = _new("extproc", "demo_proc", "-C", str(tmp_path))
    assert made.exit_code == 0, made.output
    project = tmp_path / "demo_proc"
    assert 'name = "demo-proc"' in (project / "pyproject.toml").read_text()
    assert (project / "demo_proc" / "processor.py").is_file()
    assert "class DemoProc(" in (project / "demo_proc" / "processor.py").read_text()
    # its own generator ran: the policy is named after the distribution
    assert "name: demo-proc" in (project / "envoy-configs" / "gateway.yaml").read_text()
