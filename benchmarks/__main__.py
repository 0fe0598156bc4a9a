"""Run the benchmarks: ``python -m benchmarks [name ...]`` (default: all).

Each benchmark module has ``run() -> list[str]`` returning the lines of its report; results are
also written to ``bench-results/<name>.txt``. Every goal a benchmark checked
(:mod:`benchmarks.goals`) is printed at the end in one table, PASS or FAIL, and written to
``bench-results/goals.txt``. ``SENSEI_BENCH_ROWS`` sets the rows of every benchmark.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from benchmarks import goals

#: benchmark modules, in the order they run.
BENCHMARKS = ["parse_time", "truncate", "backup", "reverse", "pitr", "undo_log"]


def main(argv: list[str]) -> int:
    chosen = argv or BENCHMARKS
    unknown = [n for n in chosen if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    for name in chosen:
        started = time.perf_counter()
        print(f"== {name}", flush=True)
        lines = importlib.import_module(f"benchmarks.{name}").run()
        lines.append(f"(benchmark took {time.perf_counter() - started:.1f} s)")
        print("\n".join(lines), flush=True)
        (out / f"{name}.txt").write_text("\n".join(lines) + "\n")
    table = goals.summary()
    print("\n".join(table), flush=True)
    (out / "goals.txt").write_text("\n".join(table) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
