"""Mutation testing of the security- and protocol-critical modules, run like a benchmark
(outside CI): mutmut 3 per module group, each with its own test selection and a per-mutant
timeout; results (and the surviving mutants) into bench/MUTATION.md.

    nice -n 10 .venv/bin/python bench/mutation.py --jobs 3 --budget 75   # writes MUTATION.md
    nice -n 10 .venv/bin/python bench/mutation.py --only headers --no-write
    nice -n 10 .venv/bin/python bench/mutation.py --resume --budget 30   # what a stop left
    .venv/bin/python bench/mutation.py --report-only   # the report from the work directories
    .venv/bin/python bench/mutation.py --list          # modules, functions, tests

Run it from a clone with its own venv (``pip install -e '.[dev]'``), never from a working tree
that others edit: the run takes a snapshot of this checkout's files into ``--work`` (default
``$TMPDIR/envoy-extkit-mutation``) and mutmut works there (its ``mutants/`` copy, its
``pyproject.toml`` with a generated ``[tool.mutmut]``), so the checkout itself is not touched.

How the pieces fit (see MUTATION.md, "How it works"):

- mutmut 3 copies the packages into ``mutants/`` with every function behind a trampoline that
  picks the mutant named by ``MUTANT_UNDER_TEST``. The tests import the packages from
  ``mutants/`` (mutmut puts it first on ``sys.path``); subprocesses do too: ``PYTHONPATH`` is
  ``mutants/``, the test helpers that set their own ``PYTHONPATH`` name ``mutants/`` or
  ``mutants/tests`` (their ROOT is the copy), and ``python -m extctl`` starts in ``mutants/``.
  The environment variable is inherited, so an ``extctl`` subprocess runs the mutant too.
- mutmut runs, for each mutant, only the tests that called the mutated function during its
  stats run. It records those calls in its own process only; a ``sitecustomize`` (in the
  directories above) makes subprocesses append their calls to files that a pytest plugin folds
  into the current test's record, so tests that reach a function only through an ``extctl``
  subprocess are run for its mutants.
- The plugin also orders each mutant's tests fastest first (mutmut stops at the first failure).
- Per mutant: mutmut's wall-clock limit ((estimated test time + timeout_constant) x
  timeout_multiplier, then SIGXCPU) and pytest-timeout's per-test limit (``--per-test-timeout``).
- The runner is a child subreaper: processes that a killed test left behind (docker-registry,
  Envoy, ``extctl``) are reparented to it and ended, by pid, while the run goes on and after it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("extproc", "extctl", "registry", "wasm")
ALSO_COPY = ("examples", "envoy-configs")
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

# -- what is mutated, and by which tests -------------------------------------------------------

REGISTRY_TESTS = ("tests/registry/test_registry.py", "tests/registry/test_check.py",
                  "tests/registry/test_hostile_registry.py", "tests/extctl/cli/test_wasm_cli.py")
# Left out: tests that spend seconds in retry back-off or deadlines (3-6 s each against a
# median of 0.1 s). Most of that logic lives in registry/transport.py and
# RegistryClient.request, which are not mutated; fetch_blob's own retry loop is the exception.
REGISTRY_SLOW = (
    "tests/registry/test_registry.py::test_cache_pull_policies_with_the_registry_stopped",
    "tests/registry/test_registry.py::test_retries_with_backoff_on_5xx",
    "tests/registry/test_hostile_registry.py::test_a_trickling_server_is_cut_at_the_deadline",
    "tests/registry/test_hostile_registry.py::"
    "test_hostile_answers_end_in_one_line_and_the_documented_code[short-blob]",
    "tests/registry/test_hostile_registry.py::"
    "test_hostile_answers_end_in_one_line_and_the_documented_code[bad-content-encoding]",
)
# The in-process tests of the message loop; the end-to-end files (serve, observability,
# protocol_e2e, envoy_e2e, body_shapes, the fuzz) start extctl serve and Envoy per test.
EXTPROC_UNIT_TESTS = tuple(f"tests/extproc/test_{name}.py" for name in (
    "headers", "processor_bodies", "processor_failure", "processor_hooks", "processor_loop",
    "processor_modes", "protocol_unit", "wire"))
EMULATOR_TESTS = tuple(f"tests/wasm/test_{name}.py" for name in (
    "emulator", "emulator_callouts", "emulator_grpc_streams", "emulator_envoy_features"))
# The AssemblyScript template is built by npm in a session fixture: 5 s or more per mutant (a
# run with it took 14 min for 200 of exchange.py's mutants, without it 4 min for all 287). Its
# two tests kill 5 mutants that no other selected test kills (see MUTATION.md).
EMULATOR_SLOW = (
    "tests/wasm/test_emulator.py::test_template_filters_in_the_emulator[as_template_module",
    "tests/wasm/test_emulator.py::"
    "test_the_sdk_filter_with_an_empty_configuration_and_a_wrong_root_id",
)


@dataclass(frozen=True)
class Target:
    key: str
    path: str
    what: str
    tests: tuple[str, ...]
    deselect: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()  # "Class.method" or "function"; empty: the whole file

    @property
    def module(self) -> str:
        return self.path.removesuffix(".py").replace("/", ".")

    def globs(self) -> list[str]:
        """mutmut's mutant-name patterns for this target."""
        if not self.functions:
            return [f"{self.module}.*"]
        out = []
        for name in self.functions:
            cls, _, func = name.rpartition(".")
            mangled = f"x\u01c1{cls}\u01c1{func}" if cls else f"x_{func}"
            out.append(f"{self.module}.{mangled}__mutmut_*")
        return out


TARGETS = (  # fast groups first: the registry group, last, gets what is left of --budget
    Target("headers", "extproc/_headers.py", "header rules and mutations",
           EXTPROC_UNIT_TESTS),
    Target("stream", "extproc/_stream.py", "the ext_proc message loop's policies",
           EXTPROC_UNIT_TESTS),
    Target("exchange", "wasm/exchange.py", "the emulator's HTTP exchange",
           EMULATOR_TESTS, EMULATOR_SLOW),
    Target("client", "registry/client.py",
           "registry client: digest and size checks of manifests and blobs",
           REGISTRY_TESTS, REGISTRY_SLOW,
           ("RegistryClient.get_manifest", "RegistryClient.fetch_blob",
            "RegistryClient._fetch_blob_once")),
    Target("transfer", "registry/transfer.py", "pull/push: resolution, verification, cache",
           REGISTRY_TESTS, REGISTRY_SLOW),
    Target("layout", "registry/layout.py", "image layouts, manifests, tar extraction",
           REGISTRY_TESTS, REGISTRY_SLOW),
    Target("check", "registry/check.py", "extctl check: layout verdicts",
           REGISTRY_TESTS, REGISTRY_SLOW),
)

STATUS = {  # mutmut's exit codes (mutmut/stats.py)
    1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped",
    35: "suspicious", 36: "timeout", 37: "type check", -24: "timeout", 24: "timeout",
    152: "timeout", 255: "timeout", -11: "segfault", -9: "segfault", None: "not checked",
    2: "interrupted",
}


def status_of(code: int | None) -> str:
    return STATUS.get(code, "suspicious")


# -- files written into the work directory -----------------------------------------------------

SITECUSTOMIZE = '''\
"""Mutation run only (bench/mutation.py): in a subprocess of a test during mutmut's stats run,
append each mutated function this process calls to $MUTATION_HITS_DIR/<pid>.hits."""
import os

if (os.environ.get("MUTANT_UNDER_TEST") == "stats"
        and os.environ.get("MUTATION_HITS_DIR")):
    try:
        import time as _time

        from mutmut.mutation import trampoline as _trampoline

        _dir = os.environ["MUTATION_HITS_DIR"]
        _last: dict = {}

        def _hit(name, caller=None):
            now = _time.monotonic()
            if now - _last.get(name, -10.0) < 0.5:
                return
            _last[name] = now
            with open(os.path.join(_dir, f"{os.getpid()}.hits"), "a") as f:
                f.write(name + "\\n")

        _trampoline.record_trampoline_hit = _hit
    except Exception:
        pass
'''

PLUGIN = '''\
"""Mutation run only (bench/mutation.py): fold subprocesses' calls into mutmut's per-test
record; run each mutant's tests fastest first."""
import json
import os
from pathlib import Path

import pytest


def _mode():
    return os.environ.get("MUTANT_UNDER_TEST", "")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item, nextitem):
    hits = os.environ.get("MUTATION_HITS_DIR")
    if _mode() != "stats" or not hits:
        return
    from mutmut.state import state

    for path in Path(hits).glob("*.hits"):
        try:
            names = path.read_text().split()
            path.unlink()
        except OSError:
            continue
        state()._stats.update(names)


def pytest_collection_modifyitems(session, config, items):
    if _mode() in ("", "stats", "fail", "list_all_tests", "mutant_generation"):
        return
    try:
        durations = json.loads(Path("mutmut-stats.json").read_text())["duration_by_test"]
    except (OSError, ValueError, KeyError):
        return
    items.sort(key=lambda item: durations.get(item.nodeid, 0.0))
'''


def mutmut_config(targets: list[Target], args: argparse.Namespace) -> str:
    selection = list(targets[0].tests)
    for nodeid in targets[0].deselect:
        selection += ["--deselect", nodeid]
    cfg = {
        "source_paths": list(PACKAGES),
        "only_mutate": [t.path for t in targets],
        "also_copy": [p for p in ALSO_COPY if (ROOT / p).exists()]
                     + ["_mutation_plugin.py", "sitecustomize.py"],
        "pytest_add_cli_args_test_selection": selection,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-p", "_mutation_plugin",
                                f"--timeout={args.per_test_timeout}"],
        "process_isolation": "forkserver",
        "timeout_multiplier": args.timeout_multiplier,
        "timeout_constant": args.timeout_constant,
        "use_git_change_detection": False,
    }
    lines = ["", "[tool.mutmut]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in cfg.items()]
    return "\n".join(lines) + "\n"


def without_mutmut_section(text: str) -> str:
    return re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", text)


def snapshot(work: Path, targets: list[Target], args: argparse.Namespace) -> None:
    """This checkout's tracked and untracked (not ignored) files of the packages, tests and
    fixtures, copied into ``work`` with the generated configuration and helpers."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z", "--",
                             *PACKAGES, "tests", *ALSO_COPY],
                            cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            target = work / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    pyproject = without_mutmut_section((ROOT / "pyproject.toml").read_text())
    (work / "pyproject.toml").write_text(pyproject + mutmut_config(targets, args))
    (work / "_mutation_plugin.py").write_text(PLUGIN)
    (work / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (work / "tests" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    (work / "hits").mkdir()
    # On PYTHONPATH from the start: a directory missing when Python starts stays unseen
    # (sys.path_importer_cache), even after mutmut fills it.
    (work / "mutants").mkdir()


# -- processes ---------------------------------------------------------------------------------

def become_subreaper() -> None:
    """Orphans of this run (a test's servers whose test process was killed) are reparented to
    this process, which ends them (``reap_orphans``)."""
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_CHILD_SUBREAPER = 36
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def reap_orphans(keep: set[int]) -> int:
    """End and reap this process's children other than ``keep``: after a subreaper took them
    in, these are processes whose parent died (or zombies)."""
    ended = 0
    for pid in children(os.getpid()):
        if pid in keep:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        ended += 1
    return ended


# -- one mutmut run ----------------------------------------------------------------------------

@dataclass
class GroupRun:
    targets: list[Target]
    seconds: float = 0.0
    interrupted: bool = False
    orphans: int = 0
    results: dict[str, dict[str, object]] = field(default_factory=dict)


def group_dir(targets: list[Target], args: argparse.Namespace) -> Path:
    return Path(args.work) / "-".join(t.key for t in targets)


def unchecked(work: Path, targets: list[Target], env: dict[str, str]
              ) -> dict[str, list[str]] | None:
    """Per target, the mutants an earlier, stopped run did not test (None: no earlier run)."""
    if not (work / "mutants" / "mutmut-stats.json").exists():
        return None
    results = dump(work, env)
    return {target.key: [name for name, entry in results.get(target.path, {}).items()
                         if entry["status"] == "not checked"] for target in targets}


def dump(work: Path, env: dict[str, str]) -> dict[str, dict[str, dict[str, object]]]:
    done = subprocess.run([sys.executable, __file__, "--dump-results"], cwd=work, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def group_env(work: Path, targets: list[Target]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MUTANT_UNDER_TEST"}
    env["PYTHONPATH"] = str(work / "mutants")
    env["MUTATION_HITS_DIR"] = str(work / "hits")
    env["MUTATION_TARGETS"] = ",".join(t.key for t in targets)
    crds = ROOT.parent / "shared" / "eg-crds"
    if "EXTCTL_EG_CRDS" not in env and crds.is_dir():
        env["EXTCTL_EG_CRDS"] = str(crds)
    return env


def load_group(targets: list[Target], args: argparse.Namespace) -> GroupRun:
    """An earlier run's results (--report-only)."""
    work = group_dir(targets, args)
    run = GroupRun(targets)
    meta = work / "run.json"
    if meta.exists():
        saved = json.loads(meta.read_text())
        run.seconds, run.interrupted = saved["seconds"], saved["interrupted"]
    run.results = dump(work, group_env(work, targets))
    return run


def run_group(targets: list[Target], args: argparse.Namespace) -> GroupRun:
    """One work directory (one stats run) for targets sharing a test selection; one mutmut
    invocation per target, in order, so a budget cut leaves the last ones untested."""
    work = group_dir(targets, args)
    env = group_env(work, targets)
    names = ", ".join(t.path for t in targets)
    run = GroupRun(targets)
    todo = unchecked(work, targets, env) if args.resume and work.exists() else None
    if todo is None:
        snapshot(work, targets, args)
        batches = [(t, t.globs()) for t in targets]
    else:
        if (work / "run.json").exists():
            run.seconds = json.loads((work / "run.json").read_text())["seconds"]
        batches = [(t, todo[t.key]) for t in targets if todo[t.key]]
        print(f"[{names}] resuming: {sum(len(b) for _, b in batches)} mutants not checked yet",
              flush=True)
    mutmut = Path(sys.executable).parent / "mutmut"
    log_path = work / "mutmut.log"
    print(f"[{names}] mutmut in {work} (log: {log_path})", flush=True)
    for target, globs in batches:
        if args.deadline and time.monotonic() > args.deadline:
            run.interrupted = True
        if run.interrupted:
            break
        command = [str(mutmut), "run", "--max-children", str(args.jobs), *globs]
        started = stopping = time.monotonic()
        with open(log_path, "a") as log:
            proc = subprocess.Popen(command, cwd=work, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            try:
                while proc.poll() is None:
                    time.sleep(2)
                    run.orphans += reap_orphans(keep={proc.pid})
                    if args.deadline and time.monotonic() > args.deadline \
                            and not run.interrupted:
                        print(f"[{target.path}] budget of {args.budget} min spent: stopping",
                              flush=True)
                        run.interrupted = True
                        proc.send_signal(signal.SIGINT)  # mutmut keeps what it has tested
                        stopping = time.monotonic()
                    if run.interrupted and time.monotonic() - stopping > 120:
                        proc.kill()
            except KeyboardInterrupt:
                run.interrupted = True
                proc.send_signal(signal.SIGINT)
                proc.wait()
            finally:
                # mutmut's own children (its fork server) end with it; what is left is ours.
                time.sleep(1)
                run.orphans += reap_orphans(keep=set())
        run.seconds += time.monotonic() - started
        (work / "run.json").write_text(json.dumps({"seconds": run.seconds,
                                                   "interrupted": run.interrupted}))
        print(f"[{target.path}] {(time.monotonic() - started) / 60:.1f} min", flush=True)
        if proc.returncode not in (0, None) and not run.interrupted:
            text = log_path.read_text(errors="replace").replace("\r", "\n")
            print(text[-4000:])
            raise SystemExit(f"mutmut failed for {target.path} (exit {proc.returncode}); "
                             f"log: {log_path}")
    run.results = dump(work, env)
    return run


def dump_results() -> None:
    """In a work directory after mutmut: per mutated file, each selected mutant's status, and
    the diff of each one that was not killed (JSON on stdout)."""
    import fnmatch

    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.mutation.diff_apply import get_diff_for_mutant
    from mutmut.utils.file_utils import walk_mutatable_files

    keys = os.environ["MUTATION_TARGETS"].split(",")
    globs = [g for t in TARGETS if t.key in keys for g in t.globs()]

    out: dict[str, dict[str, object]] = {}
    for path in walk_mutatable_files():
        data = SourceFileMutationData(path=path)
        data.load()
        mutants = {}
        for name, code in data.exit_code_by_key.items():
            if not any(fnmatch.fnmatch(name, g) for g in globs):
                continue
            status = status_of(code)
            entry: dict[str, object] = {"status": status}
            if status not in ("killed", "timeout"):
                entry["diff"] = get_diff_for_mutant(name, path=path)
            mutants[name] = entry
        out[str(path)] = mutants
    json.dump(out, sys.stdout)


# -- the report --------------------------------------------------------------------------------

COUNTED = ("killed", "timeout", "survived", "suspicious", "segfault", "no tests",
           "not checked")


def function_of(name: str) -> str:
    func = name.rpartition(".")[2].rpartition("__mutmut_")[0]
    if func.startswith("x_"):
        return func[2:]
    _, cls, method = func.split("\u01c1")
    return f"{cls}.{method}"


def spans(path: Path) -> dict[str, tuple[int, int]]:
    import ast

    tree = ast.parse(path.read_text())
    out: dict[str, tuple[int, int]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            out[node.name] = (node.lineno, node.end_lineno or node.lineno)
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    out[f"{node.name}.{item.name}"] = (item.lineno, item.end_lineno or item.lineno)
    return out


def describe(diff: str, source: list[str], span: tuple[int, int]) -> tuple[int | None, str]:
    """(line in the file, '`old` → `new`') of a mutant's diff."""
    removed = [ln[1:] for ln in diff.splitlines() if ln.startswith("-") and not
               ln.startswith("---")]
    added = [ln[1:] for ln in diff.splitlines() if ln.startswith("+") and not
             ln.startswith("+++")]
    line = None
    if removed:
        want = removed[0].strip()
        for number in range(span[0], span[1] + 1):
            if source[number - 1].strip() == want:
                line = number
                break
    old = " / ".join(r.strip() for r in removed)
    new = " / ".join(a.strip() for a in added) or "(removed)"
    return line, f"`{old}` → `{new}`"


def score(counts: dict[str, int]) -> float | None:
    detected = counts["killed"] + counts["timeout"]
    tried = sum(counts[s] for s in COUNTED if s != "not checked")
    return 100.0 * detected / tried if tried else None


def render(runs: list[GroupRun], args: argparse.Namespace, total: float) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", *PACKAGES, "tests"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    import mutmut

    version = getattr(mutmut, "__version__", "?")
    lines = [BEGIN, "",
             f"## Results ({datetime.date.today().isoformat()}, commit {commit}"
             f"{' with local changes' if dirty else ''})", "",
             f"mutmut {version}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
             f"{args.jobs} mutants at a time, `nice -n 10`; per mutant: mutmut's limit "
             f"((estimated test time + {args.timeout_constant} s) x {args.timeout_multiplier}) "
             f"and {args.per_test_timeout} s per test. Wall time: **{total / 60:.0f} min**"
             + (" (some groups stopped at their budget: see 'not checked')"
                if any(r.interrupted for r in runs) else "") + ".", "",
             "Score: killed (timeouts included) over every mutant tried; a mutant no selected "
             "test reaches ('no tests') counts as not killed.", "",
             "| module | mutated | tests | mutants | killed | timeout | survived | suspicious "
             "| no tests | not checked | score | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    details: list[str] = []
    for run in runs:
        for target in run.targets:
            mutants = run.results.get(target.path, {})
            counts = {s: 0 for s in COUNTED}
            for entry in mutants.values():
                status = str(entry["status"])
                counts[status if status in counts else "suspicious"] += 1
            s = score(counts)
            mutated = ", ".join(f"`{f}`" for f in target.functions) or "whole file"
            tests = ", ".join(Path(t).stem for t in target.tests)
            if target.deselect:
                tests += f" (less {len(target.deselect)} slow)"
            minutes = f"{run.seconds / 60:.0f} (group)" if len(run.targets) > 1 else \
                f"{run.seconds / 60:.1f}"
            lines.append(
                f"| `{target.path}` | {mutated} | {tests} | {len(mutants)} | {counts['killed']} "
                f"| {counts['timeout']} | {counts['survived']} | {counts['suspicious']} "
                f"| {counts['no tests']} | {counts['not checked']} "
                f"| {'-' if s is None else f'{s:.1f}%'} | {minutes} |")
            source_path = ROOT / target.path
            source = source_path.read_text().splitlines()
            where = spans(source_path)
            left = [(n, e) for n, e in mutants.items()
                    if e["status"] not in ("killed", "timeout", "not checked")]
            details += ["", f"### `{target.path}`: {len(left)} not killed", ""]
            if not left:
                details.append("None.")
            rows = []
            for name, entry in left:
                func = function_of(name)
                line, change = describe(str(entry.get("diff", "")), source,
                                        where.get(func, (1, len(source))))
                number = name.rpartition("__mutmut_")[2]
                rows.append((line or 0, func, number, str(entry["status"]), change))
            for line, func, number, status, change in sorted(rows):
                tag = "" if status == "survived" else f" **{status}**"
                details.append(f"- L{line} `{func}` #{number}{tag}: {change}")
    lines += details
    lines += ["", END]
    return "\n".join(lines)


def write_report(block: str, path: Path) -> None:
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail
    else:
        text = (text.rstrip() + "\n\n" if text else "# Mutation testing\n\n") + block + "\n"
    path.write_text(text)


# -- main --------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated target keys (see --list)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    parser.add_argument("--work", default=str(Path(tempfile.gettempdir())
                                              / "envoy-extkit-mutation"))
    parser.add_argument("--per-test-timeout", type=int, default=60)
    parser.add_argument("--timeout-multiplier", type=float, default=3.0)
    parser.add_argument("--timeout-constant", type=float, default=10.0)
    parser.add_argument("--budget", type=float, default=0,
                        help="minutes for the whole run; the mutmut run going on then is "
                             "stopped and its untested mutants reported as not checked "
                             "(0: no limit)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "MUTATION.md"))
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the work directories of a stopped run: test only the "
                             "mutants it did not check")
    parser.add_argument("--report-only", action="store_true",
                        help="write the report from the work directories of earlier runs")
    parser.add_argument("--dump-results", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.dump_results:
        dump_results()
        return
    targets = list(TARGETS)
    if args.only:
        keys = args.only.split(",")
        unknown = set(keys) - {t.key for t in TARGETS}
        if unknown:
            parser.error(f"unknown targets {sorted(unknown)}; see --list")
        targets = [t for t in TARGETS if t.key in keys]
    if args.list:
        for t in targets:
            print(f"{t.key:9} {t.path}  {', '.join(t.functions) or '(whole file)'}")
            print(f"{'':9} tests: {' '.join(t.tests)}")
            for d in t.deselect:
                print(f"{'':9} less:  {d}")
        return
    # One mutmut run per test selection: one stats run and one warm-up for its modules.
    groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[Target]] = {}
    for t in targets:
        groups.setdefault((t.tests, t.deselect), []).append(t)
    if args.report_only:
        runs = [load_group(group, args) for group in groups.values()]
    else:
        # A shell's background job starts with SIGINT ignored, and mutmut would inherit that:
        # the budget's SIGINT must reach it.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        become_subreaper()
        args.deadline = time.monotonic() + args.budget * 60 if args.budget else None
        runs = [run_group(group, args) for group in groups.values()]
    total = sum(run.seconds for run in runs)
    block = render(runs, args, total)
    if args.no_write:
        print(block)
    else:
        write_report(block, Path(args.output))
        print(f"wrote {args.output} ({total / 60:.0f} min)")


if __name__ == "__main__":
    main()
