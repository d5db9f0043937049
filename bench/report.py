"""What bench/run.py prints and writes: a plain table per scenario for the terminal, the same in
markdown for ``bench/RESULTS.md`` (between markers, so the hand-written sections around them
stay), ratios to the Go reference on every row, and the targets.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scenarios import Candidate, Sample, Scenario

Results = dict[str, dict[str, list["Sample"]]]

BEGIN = "<!-- bench/run.py writes from here to the end marker; edit outside the markers -->"
END = "<!-- end of what bench/run.py writes -->"


GO_REQ = " (go-req's for the request-headers-only rows)"


def med(values: Sequence[float]) -> float:
    return statistics.median(values)


class Row:
    """One candidate's medians, and the same divided by its Go reference's (None: no Go)."""

    def __init__(self, scenario: Scenario, candidate: Candidate, samples: Results) -> None:
        runs = samples[scenario.name][candidate.name]
        self.candidate = candidate
        self.rps = med([s.rps for s in runs])
        self.mbps = (self.rps * len(scenario.upstream_body or b"") / 1e6
                     if scenario.throughput else None)
        self.p50 = med([s.p50_ms for s in runs])
        self.p99 = med([s.p99_ms for s in runs])
        cpus = [s.cpu_us for s in runs if s.cpu_us is not None]
        self.cpu = med(cpus) if cpus else None
        envoy = [s.envoy_cpu_us for s in runs if s.envoy_cpu_us is not None]
        self.envoy_cpu = med(envoy) if envoy else None
        self.go: Row | None = None
        reference = next((c for c in scenario.candidates if c.name == candidate.reference),
                         None)
        if reference is not None and reference is not candidate:
            self.go = Row(scenario, reference, samples)
        elif reference is candidate:
            self.go = self

    def ratio(self, field: str) -> float | None:
        mine = getattr(self, field)
        theirs = getattr(self.go, field) if self.go is not None else None
        if mine is None or not theirs:
            return None
        return float(mine / theirs)


COLUMNS: tuple[tuple[str, str, str, bool], ...] = (
    # (field, heading, format, followed by its ratio to Go)
    ("rps", "req/s", ".0f", True),
    ("mbps", "MB/s", ".1f", False),
    ("p50", "p50 ms", ".2f", True),
    ("p99", "p99 ms", ".2f", True),
    ("cpu", "CPU µs/req", ".0f", True),
    ("envoy_cpu", "Envoy µs/req", ".0f", False),
)


def _columns(scenario: Scenario) -> list[tuple[str, str, str, bool]]:
    return [c for c in COLUMNS if c[0] != "mbps" or scenario.throughput]


def _cells(scenario: Scenario, row: Row) -> list[str]:
    cells = []
    for field, _, fmt, ratio in _columns(scenario):
        value = getattr(row, field)
        cells.append("-" if value is None else format(value, fmt))
        if ratio:
            against = row.ratio(field)
            cells.append("-" if against is None else f"{against:.2f}")
    return cells


def _headings(scenario: Scenario, go: str) -> list[str]:
    headings = []
    for _, heading, _, ratio in _columns(scenario):
        headings += [heading, f"/{go}"] if ratio else [heading]
    return headings


def _rows(scenario: Scenario, results: Results) -> list[Row]:
    return [Row(scenario, c, results) for c in scenario.candidates]


def text(scenarios: Sequence[Scenario], results: Results, rounds: int, duration: float) -> str:
    """Aligned tables for a terminal; a legend of the candidates under each."""
    out = []
    for scenario in scenarios:
        if scenario.name not in results:
            continue
        rows = _rows(scenario, results)
        table = [["candidate", *_headings(scenario, "Go")]]
        table += [[row.candidate.name, *_cells(scenario, row)] for row in rows]
        widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
        out += ["", scenario.title,
                f"wrk -c{scenario.connections}, {rounds} round{'s' if rounds > 1 else ''} of "
                f"{duration:g} s, medians; /Go = this row's figure divided by the Go "
                f"reference's{GO_REQ if any(r.candidate.reference != 'go' for r in rows) else ''}"
                "; Envoy µs/req: the CPU of the Envoy under test", ""]
        for line in table:
            out.append("  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                                 for i, cell in enumerate(line)).rstrip())
        out.append("")
        out += [f"  {row.candidate.name}: {row.candidate.description}" for row in rows]
    return "\n".join(out)


def markdown(scenarios: Sequence[Scenario], results: Results,
             versions: str, method: str, load: tuple[str, str], machine: str,
             date: str) -> str:
    lines = [
        f"- date: {date}",
        f"- machine: {machine}, shared and noisy: compare ratios within one run, not absolute "
        "numbers across runs",
        f"- versions: {versions}",
        f"- method: {method}",
        f"- load average (1 / 5 / 15 min) of the shared machine: {load[0]} before the run, "
        f"{load[1]} after",
        "- /Go: the figure divided by the Go reference's in the same scenario (`go`, or "
        "`go-req` for the request-headers-only rows): above 1 is more requests/s, more latency "
        "or more CPU than Go. Envoy µs/req: the CPU of the Envoy under test (the ext_proc "
        "client's side; in the body scenarios its upstream listener's too) per request.",
        "",
    ]
    for scenario in scenarios:
        samples = results.get(scenario.name)
        if samples is None:
            continue
        rows = _rows(scenario, results)
        headings = ["candidate", *_headings(scenario, "Go")]
        lines += [f"## {scenario.title}", "",
                  f"wrk -c{scenario.connections}. {scenario.note}".rstrip(), "",
                  "| " + " | ".join(headings) + " |",
                  "|---|" + "---:|" * (len(headings) - 1)]
        for row in rows:
            lines.append(f"| {row.candidate.name}: {row.candidate.description} | "
                         + " | ".join(_cells(scenario, row)) + " |")
        ratios = [(a, b) for a, b in scenario.ratios if a in samples and b in samples]
        if ratios:
            lines += ["", "Ratios of medians:", ""]
        for name, against in ratios:
            a, b = samples[name], samples[against]
            rps = med([s.rps for s in a]) / med([s.rps for s in b])
            cpu = med([s.cpu_us or 0 for s in a]) / med([s.cpu_us or 0 for s in b])
            lines.append(f"- {name} / {against}: requests/s **{rps:.2f}x**, "
                         f"CPU per request **{cpu:.2f}x**")
        if "envoy" in samples and scenario.connections == 1:
            base = med([s.p50_ms for s in samples["envoy"]])
            for row in rows:
                if row.candidate.name != "envoy":
                    lines.append(f"- {row.candidate.name}: p50 added over Envoy alone "
                                 f"**{row.p50 - base:.2f} ms**")
        lines.append("")
    return "\n".join(lines)


Target = tuple[str, str, str, str, str, str, float]


def targets(table: Sequence[Target], results: Results) -> list[str]:
    """The targets whose candidates ran, measured and marked met or not."""
    lines = ["## Targets", "", "| target | measured | met |", "|---|---:|---|"]
    metrics: dict[str, Callable[[Sample], float]] = {
        "rps": lambda s: s.rps, "cpu": lambda s: s.cpu_us or 0.0, "p50": lambda s: s.p50_ms}
    for label, scenario, name, against, metric, comparison, bound in table:
        samples = results.get(scenario, {})
        if name not in samples or against not in samples:
            continue
        a, b = samples[name], samples[against]
        if metric == "p50_added":
            value = med([s.p50_ms for s in a]) - med([s.p50_ms for s in b])
            shown = f"{value:.2f} ms"
        else:
            value = med([metrics[metric](s) for s in a]) / med([metrics[metric](s) for s in b])
            shown = f"{value:.2f}x"
        met = value >= bound if comparison == ">=" else value <= bound
        lines.append(f"| {label} | {shown} | {'yes' if met else '**no**'} |")
    return [*lines, ""]


def write_between_markers(path: Path, generated: str) -> None:
    """Put ``generated`` between the markers of ``path``, keeping everything outside them.

    A file without markers gets them after its title line, the rest kept below.
    """
    block = f"{BEGIN}\n\n{generated.strip()}\n\n{END}"
    current = path.read_text() if path.exists() else "# Benchmark results\n"
    if BEGIN in current and END in current:
        head, _, rest = current.partition(BEGIN)
        _, _, tail = rest.partition(END)
        path.write_text(head + block + tail)
        return
    title, _, rest = current.partition("\n")
    path.write_text(f"{title}\n\n{block}\n\n{rest.lstrip()}".rstrip("\n") + "\n")
