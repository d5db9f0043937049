"""One revision's extproc/extctl against another's (``--revision``, default the working tree,
against ``--baseline``), side by side in one run of bench/run.py's harness: headers (both and
request-only; latency at concurrency 1), STREAMED 1 MiB responses, BUFFERED 64 KiB JSON
requests; candidates alternated round by round, medians, ratios. ``--transport pyvoy``
compares the pyvoy transport's code instead of grpcio's (headers both ways in the headers
scenario, every other scenario as for grpcio).

    .venv/bin/python bench/speed_ab.py --baseline REV [--revision REV] [--rounds 5]
        [--transport grpcio|pyvoy] [--scenario streamed ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as harness


def _pair(candidate: harness.Candidate) -> tuple[harness.Candidate, harness.Candidate]:
    base = dataclasses.replace(candidate, name=f"{candidate.name}-base", baseline=True,
                               description=f"{candidate.description} (--baseline code)")
    return base, candidate


def scenarios(revision: str | None = None, transport: str = "grpcio",
              only: list[str] | None = None) -> list[harness.Scenario]:
    chosen = []
    for scenario in harness.SCENARIOS:
        if scenario.name not in (only or ("headers", "latency", "streamed", "buffered")):
            continue
        if transport == "pyvoy":
            names: tuple[str, ...] = ("extkit-pyvoy",)
        else:
            names = ("extkit", "extkit-req") if scenario.name == "headers" else ("extkit",)
        candidates = [c for c in scenario.candidates if c.name in names]
        if revision is not None:
            tree = f"{harness._baseline_tree(revision)}:{harness.BENCH}"
            candidates = [dataclasses.replace(c, env=(("PYTHONPATH", tree),))
                          for c in candidates]
        pairs = [p for c in candidates for p in _pair(c)]
        chosen.append(dataclasses.replace(
            scenario, candidates=tuple(pairs),
            ratios=tuple((c.name, f"{c.name}-base") for c in candidates)))
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--baseline", required=True)
    parser.add_argument("--revision", help="serve the candidates with this revision's code")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--transport", choices=("grpcio", "pyvoy"), default="grpcio")
    parser.add_argument("--scenario", action="append",
                        choices=("headers", "latency", "streamed", "buffered"))
    args = parser.parse_args()
    harness.BASELINE_REVISION = args.baseline
    before = harness._load()
    chosen = [s for s in scenarios(args.revision, args.transport, args.scenario)
              if s.candidates]
    results = harness.run(chosen, args.rounds, args.duration, False, False)
    print(f"\nload average: {before} before, {harness._load()} after")
    for scenario in chosen:
        samples = results[scenario.name]
        for name, against in scenario.ratios:
            def med(key: str, who: str, samples: dict[str, list[harness.Sample]] = samples
                    ) -> float:
                return statistics.median(getattr(s, key) or 0 for s in samples[who])
            print(f"{scenario.name}: {name} / {against}: requests/s "
                  f"{med('rps', name) / med('rps', against):.2f}x "
                  f"({med('rps', name):.0f} vs {med('rps', against):.0f}), CPU per request "
                  f"{med('cpu_us', name) / med('cpu_us', against):.2f}x "
                  f"({med('cpu_us', name):.0f} vs {med('cpu_us', against):.0f} us), "
                  f"p50 {med('p50_ms', name):.2f} vs {med('p50_ms', against):.2f} ms")


if __name__ == "__main__":
    main()
