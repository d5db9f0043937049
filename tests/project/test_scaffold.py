"""``extctl new``: each template, generated into a temporary directory, installs with pip and
passes its own tests there (a real Envoy included; the AssemblyScript one builds with npm)."""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from extctl.cli import cli
from tests.helpers.crds import validate


@pytest.fixture(scope="module")
def project_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv that sees this one's packages (envoy-extkit among them) but installs
    the generated project into its own site-packages, as a user's venv would."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    target = subprocess.run([str(python), "-c", "import site; print(site.getsitepackages()[0])"],
                            check=True, capture_output=True, text=True).stdout.strip()
    parent = site.getsitepackages()[0]
    Path(target, "extkit-parent.pth").write_text(f"import site; site.addsitedir({parent!r})\n")
    return python


def _new(*args: str) -> object:
    return CliRunner().invoke(cli, ["new", *args])


def _install_and_test(project: Path, python: Path, extra: str = "") -> str:
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
         "--disable-pip-version-check", "-e", f"{project}{extra}"],
        capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout + install.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "PYTHONPATH"))}
    run = subprocess.run([str(python), "-m", "pytest", "-p", "no:cacheprovider"],
                         cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def _passed(output: str) -> int:
    match = re.search(r"(\d+) passed", output)
    assert match, output
    assert not re.search(r"\d+ (failed|skipped|errors?)\b", output), output
    return int(match.group(1))


def _lint(project: Path) -> None:
    """The generated code passes ruff with the rules its pyproject.toml sets."""
    ruff = Path(sys.executable).parent / "ruff"
    check = subprocess.run([str(ruff), "check", "--no-cache", "."], cwd=project,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_new_extproc_project_installs_and_passes_its_tests(tmp_path, project_python):
    result = _new("extproc", "tenant-guard", "-C", str(tmp_path))
    assert result.exit_code == 0, result.output
    project = tmp_path / "tenant-guard"
    assert (project / "tenant_guard" / "processor.py").exists()
    gateway = list(yaml.safe_load_all((project / "envoy-configs" / "gateway.yaml").read_text()))
    assert [d["kind"] for d in gateway] == ["EnvoyExtensionPolicy", "Backend", "EnvoyProxy",
                                            "ConfigMap"]
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
    assert _passed(_install_and_test(project, project_python, "[dev]")) == 6
    _lint(project)


@pytest.mark.parametrize("lang", ["wat", "assemblyscript"])
def test_new_wasm_project_builds_and_passes_its_tests_in_envoy(tmp_path, project_python, lang):
    if lang == "assemblyscript" and shutil.which("npm") is None:
        raise AssertionError("npm is missing: the AssemblyScript template needs Node.js and npm")
    result = _new("wasm", "tagger", "--lang", lang, "-C", str(tmp_path))
    assert result.exit_code == 0, result.output
    project = tmp_path / "tagger"
    assert not (project / "build").exists()
    # 2 in the emulator, 1 comparing the emulator with Envoy
    assert _passed(_install_and_test(project, project_python)) == 8
    _lint(project)
    module = project / "build" / "filter.wasm"
    assert module.read_bytes().startswith(b"\0asm")  # its tests built it
    policy = next(yaml.safe_load_all((project / "envoy-configs" / "gateway.yaml").read_text()))
    assert policy["spec"]["wasm"][0]["code"]["image"]["url"] == \
        "registry.example.com/filters/tagger:v1"


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
