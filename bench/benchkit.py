"""What every benchmark shares: recording a figure against its target, and the summary table.

A benchmark calls :func:`record` for each figure it has a target for. The figure is printed at once
and, when ``CALMESH_BENCH_SUMMARY`` names a file (``make bench`` sets it), appended to that file as a
JSON line. ``python bench/benchkit.py summary FILE`` prints every recorded figure as one table —
target, measured, met or missed — with the load average, and exits non-zero if any was missed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def record(bench: str, figure: str, target: str, measured: str, met: bool) -> bool:
    """Print one figure with its target and keep it for the summary; returns ``met``."""
    print(f"  [{'met' if met else 'MISSED'}] {figure}: {measured} (target {target})", flush=True)
    path = os.environ.get("CALMESH_BENCH_SUMMARY")
    if path:
        line = {"bench": bench, "figure": figure, "target": target, "measured": measured, "met": bool(met),
                "load": round(os.getloadavg()[0], 1)}
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
    return met


def summary(path: Path, failed: list[str]) -> int:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] if path.exists() else []
    headers = ("benchmark", "figure", "target", "measured", "", "load")
    table = [(r["bench"], r["figure"], r["target"], r["measured"], "met" if r["met"] else "MISSED", f"{r['load']:.1f}")
             for r in rows]
    widths = [max([len(h)] + [len(t[i]) for t in table]) for i, h in enumerate(headers)]
    print()
    print(f"== summary ({os.cpu_count()} cores; load average when each figure was taken)")
    for line in [headers, tuple("-" * w for w in widths), *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    missed = [r for r in rows if not r["met"]]
    # A benchmark that failed without recording a miss (it crashed, or a check beside its figures failed).
    silent = [b for b in failed if not any(r["bench"] == Path(b).stem.removesuffix("_bench") for r in missed)]
    print(f"== {len(rows) - len(missed)} of {len(rows)} targets met"
          + (f"; missed: {', '.join(sorted({r['bench'] + ': ' + r['figure'] for r in missed}))}" if missed else "")
          + (f"; failed without a figure: {', '.join(silent)}" if silent else ""))
    return 1 if missed or failed else 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "summary":
        sys.exit(summary(Path(sys.argv[2]), sys.argv[3:]))
    sys.exit("usage: python bench/benchkit.py summary FILE [FAILED_BENCH ...]")
