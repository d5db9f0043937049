"""The project's structure: no import cycle among its modules, public surfaces pinned, and
commands that import only what they run."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("extproc", "wasm", "registry", "extctl")


def _module_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (at any depth of its code, typing included)."""
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        base = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:
                    parts = base.split(".")[: len(base.split(".")) - node.level + 1]
                    module = ".".join([*parts, module] if module else parts)
                targets = [module, *(f"{module}.{a.name}" for a in node.names)]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_cycle_check_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]


def test_no_import_cycle_among_the_project_modules():
    graph = _module_graph()
    assert "extctl.config.deployment" in graph["extctl.cli.gen"] or \
        "extctl.config" in graph["extctl.cli.gen"]  # the graph is read, not empty
    assert "wasm.vm" in graph["wasm.context"] and "wasm.context" not in graph["wasm.vm"]
    assert _cycles(graph) == []


# The layers: extctl (the CLI, the config generators, the harness that runs Envoy) on top of
# the libraries; registry may use wasm (a pulled module is checked as Wasm); extproc and wasm
# use no other package of the project.
MAY_IMPORT = {"extproc": set(), "wasm": set(), "registry": {"wasm"},
              "extctl": {"extproc", "wasm", "registry"}}
# ... and every package its error root and the test doubles' exchange shape, from modules
# that import nothing.
SHARED = {"extproc.errors", "extproc.exchange"}


def _package(module: str) -> str:
    return module.split(".")[0]


def _private(module: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in module.split("."))


def _layer_breaches(graph: dict[str, set[str]]) -> list[str]:
    """Imports that run against the layers, or into another package's private modules."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            own, other = _package(module), _package(target)
            if own == other:
                continue
            if target in SHARED:
                continue
            if other not in MAY_IMPORT[own]:
                found.append(f"{module} -> {target}: {own} may not import {other}")
            elif _private(target):
                found.append(f"{module} -> {target}: a private module of {other}")
    return found


def test_the_layer_check_sees_a_breach():
    assert _layer_breaches({"wasm.testing": {"extctl.harness"}, "extctl.a": {"extproc._x"},
                            "extctl.b": {"extproc.lifecycle"}, "wasm.x": {"extproc.errors"},
                            "wasm.y": {"extproc.lifecycle"}}) == [
        "extctl.a -> extproc._x: a private module of extproc",
        "wasm.testing -> extctl.harness: wasm may not import extctl",
        "wasm.y -> extproc.lifecycle: wasm may not import extproc"]


def test_layers_point_one_way_and_packages_meet_only_in_public_modules():
    graph = _module_graph()
    assert "extproc.lifecycle" in graph["extctl.harness.envoy"]  # the graph is read
    assert _layer_breaches(graph) == []


def _private_names(source: str, package: str) -> list[str]:
    """Private names (``_x``) that code of ``package`` imports from another package, or reads
    as an attribute of another package (``extproc._config``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            other = node.module.split(".")[0]
            if other in PACKAGES and other != package:
                found += [f"{node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            other = node.value.id
            if (other in PACKAGES and other != package and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                found.append(f"{other}.{node.attr}")
    return found


def test_the_private_name_check_sees_one():
    assert _private_names("from extproc.lifecycle import _prctl, dies_with_us\n"
                          "import extproc\nextproc._config\nextproc.__name__\n",
                          "extctl") == ["extproc.lifecycle._prctl", "extproc._config"]
    assert _private_names("from extproc.lifecycle import _prctl\n", "extproc") == []


def test_no_package_reaches_into_another_for_a_private_name():
    found = {str(path.relative_to(ROOT)): names
             for package in PACKAGES for path in (ROOT / package).rglob("*.py")
             if (names := _private_names(path.read_text(), package))}
    assert found == {}


def test_config_library_public_names():
    import extctl.config

    assert sorted(extctl.config.__all__) == sorted([
        "DEFAULT_ORDER", "CalloutCluster", "ConfigError", "Deployment", "DynamicModule",
        "EnvoyOptions", "FilterPosition",
        "GatewayError", "GatewayOptions", "Policy", "ProcessorTls", "SessionPersistence",
        "Sidecar", "Target", "WasmModule", "envoy_yaml", "gateway_yaml", "kebab", "to_json"])
    for name in extctl.config.__all__:
        member = getattr(extctl.config, name)
        if isinstance(member, type) or callable(member):
            assert member.__module__.startswith("extctl.config"), name


def test_testing_public_names():
    import extctl.testing

    assert sorted(extctl.testing.__all__) == [
        "Difference", "Differences", "EnvoyClient", "EnvoyProcess", "Exchange",
        "LocalRegistry", "Reply", "Stack", "compare_with_envoy", "envoy_stack", "find_envoy",
        "http", "stack"]
    for name in extctl.testing.__all__:
        assert getattr(extctl.testing, name).__module__.startswith("extctl.harness"), name


def _imported_by(*argv: str, whole: bool = False) -> set[str]:
    """Top-level modules (``whole``: every module) loaded by ``extctl ARGV`` in a fresh
    interpreter."""
    name = "m" if whole else "m.split('.')[0]"
    code = ("import sys; from extctl.cli import cli\n"
            "try:\n    cli(" + repr(list(argv)) + ", prog_name='extctl')\n"
            "except SystemExit:\n    pass\n"
            "print(' '.join(sorted({" + name + " for m in sys.modules})), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    return set(done.stderr.strip().splitlines()[-1].split())


def test_commands_import_only_what_they_run():
    version = _imported_by("--version")
    assert not version & {"grpc", "wasmtime", "envoy", "extproc", "wasm", "registry",
                          "httpx", "yaml"}, version
    pull = _imported_by("pull", "oci://127.0.0.1:9/f/x:v1", "-o", "/nonexistent/x.wasm",
                        "--timeout", "0.5", "--no-cache")
    assert {"registry", "httpx"} <= pull
    assert not pull & {"grpc", "wasmtime", "yaml"}, pull
    # of extproc, only the error root every package derives from
    pulled = _imported_by("pull", "oci://127.0.0.1:9/f/x:v1", "-o", "/nonexistent/x.wasm",
                          "--timeout", "0.5", "--no-cache", whole=True)
    assert {m for m in pulled if m.split(".")[0] == "extproc"} == {"extproc",
                                                                   "extproc.errors"}, pulled
    gen = _imported_by("gen", "--help")
    assert not gen & {"wasmtime", "registry", "httpx"}, gen
    # what an exec probe runs: the health check, not the server, its protos or asyncio's loop
    # (a path that exists: for a missing one health says so without asking)
    health = _imported_by("health", "--uds", "/dev/null", "--timeout", "0.2", whole=True)
    assert {"grpc", "grpc_health.v1.health_pb2", "extproc._config"} <= health
    assert not health & {"extproc.transports.grpcio", "extproc._stream", "extproc._headers",
                         "uvloop", "envoy.service.ext_proc.v3.external_processor_pb2",
                         "wasmtime", "httpx"}, sorted(health)


def test_the_exit_code_table_names_real_classes():
    import importlib

    from extctl.cli.exits import TABLE

    for module, name, code in TABLE:
        cls = getattr(importlib.import_module(module), name)
        assert isinstance(cls, type) and issubclass(cls, Exception), (module, name)
        assert 1 <= code <= 13


def test_one_error_root():
    """Every package's errors under one class a user can catch; one DigestMismatch."""
    import extctl.errors
    import extproc
    import registry.errors
    import wasm.errors

    for root in (extproc.ExtprocError, wasm.errors.WasmError, wasm.errors.CalloutFailure,
                 registry.errors.RegistryError, extctl.errors.ExtctlError):
        assert issubclass(root, extproc.ExtkitError), root
    assert issubclass(registry.errors.DigestMismatch, wasm.errors.DigestMismatch)
    mismatch = registry.errors.DigestMismatch("m", url="https://r/v2/", status=200)
    assert (str(mismatch), mismatch.url, mismatch.expected) == ("m", "https://r/v2/", "")
