"""Run every benchmark (each in its own interpreter) and write docs/performance.md.

    python -m benchmarks.run              # everything (what `make bench` runs)
    python -m benchmarks.run audit peer   # some of them; the others keep their last results

``BENCH_QUICK=1`` makes every benchmark short, for trying the suite out; the page then
says its numbers are from a quick run.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from benchmarks.common import DOC, QUICK, RESULTS, machine, render_table, run_module

BENCHMARKS = {
    "inprocess": "benchmarks.bench_inprocess",
    "limits": "benchmarks.bench_limits",
    "scaling": "benchmarks.bench_scaling",
    "audit": "benchmarks.bench_audit",
    "e2e": "benchmarks.bench_e2e",
    "peer": "benchmarks.bench_peer",
    "workers": "benchmarks.bench_workers",
    "django": "benchmarks.bench_django",
}
FINDINGS = Path(__file__).resolve().parent / "findings.md"

HEAD = """# Performance

A token check sits in front of every API request, so its cost is the first number that
matters. This page is written by `make bench` (the suite is in `benchmarks/`); do not
edit it by hand: change the benchmarks or `benchmarks/findings.md` and run it again.

How to read it: every timing is a median of repeated rounds, and the things compared
(bare vs wrapped, ours vs the peer) are measured in the same run, interleaved, because
the machines this runs on are shared and noisy. Headlines are ratios or differences of
numbers from the same run. Absolute numbers move by tens of percent between runs; each
section gives the time of a fixed pure-Python loop taken when it was measured (lower is a
faster machine), to tell a slow minute from a slow change.
"""


def load_results() -> dict[str, dict[str, object]]:
    found = {}
    for key in BENCHMARKS:
        path = RESULTS / f"{key}.json"
        if path.exists():
            found[key] = json.loads(path.read_text())
    return found


def write_doc(
    results: dict[str, dict[str, object]],
    failed: list[str],
    elapsed: float,
    ran: list[str] | None = None,
) -> None:
    info = machine()
    parts = [HEAD]
    parts.append("## Machine\n")
    parts.append(
        render_table(
            ["", ""],
            [
                ["CPU", info["cpu"]],
                ["cores", info["cores"]],
                ["Python", info["python"]],
                ["OS", info["os"]],
                ["date", info["date"]],
                ["load average when written", info["load"]],
            ],
        )
    )
    if QUICK:
        parts.append("\n**Quick run** (`BENCH_QUICK=1`): short rounds, rough numbers.")
    if ran is None or set(ran) == set(BENCHMARKS):
        parts.append(f"\nThe suite took {elapsed / 60:.1f} minutes.")
    else:
        parts.append(
            f"\nThe last run ({', '.join(ran)}) took {elapsed / 60:.1f} minutes; the other "
            "sections are from earlier runs. Each section says when it was measured."
        )
    parts.append("\n## The budget\n")
    rows = []
    for key in BENCHMARKS:
        result = results.get(key)
        if result is None:
            continue
        for target, measured, met in result["verdicts"]:  # type: ignore[attr-defined]
            rows.append([target, measured, "met" if met else "**missed**"])
    parts.append(render_table(["target", "measured", ""], rows))
    if failed:
        parts.append("\nThese benchmarks failed in this run: " + ", ".join(failed) + ".")
    for key in BENCHMARKS:
        result = results.get(key)
        if result is None:
            continue
        parts.append(f"\n## {result['title']}\n")
        if result["intro"]:
            parts.append(str(result["intro"]) + "\n")
        for header, rows_ in result["tables"]:  # type: ignore[attr-defined]
            parts.append(render_table(header, rows_) + "\n")
        for note in result["notes"]:  # type: ignore[attr-defined]
            parts.append(str(note) + "\n")
        when = result.get("machine", {}).get("date", "?")  # type: ignore[attr-defined]
        reference = result.get("reference_ms")
        speed = f" Reference loop then: {reference:.1f} ms." if reference else ""
        parts.append(f"*Measured {when}.{speed}*\n")
    if FINDINGS.exists():
        parts.append("\n" + FINDINGS.read_text().strip() + "\n")
    DOC.write_text("\n".join(parts).rstrip() + "\n")
    print(f"\nwrote {DOC}")


def main() -> int:
    chosen = sys.argv[1:] or list(BENCHMARKS)
    unknown = [name for name in chosen if name not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmarks: {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    started = time.perf_counter()
    failed = []
    for name in chosen:
        (RESULTS / f"{name}.json").unlink(missing_ok=True)
        if run_module(BENCHMARKS[name]) != 0:
            failed.append(name)
    write_doc(load_results(), failed, time.perf_counter() - started, chosen)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
