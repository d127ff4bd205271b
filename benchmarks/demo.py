"""The offline demo against its time budgets (2 CPU cores): the whole study must stay under 10 min.

Runs `persona-dynamics demo` into a temporary directory (the toy organism comes from its cache,
or is built and timed first) and prints one JSON line: seconds per stage, the budget of each,
the total with the toy build, and `within_budget`. Exits 1 when a stage or the total is over.

    python benchmarks/demo.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from persona_dynamics.pipeline import demo_config, run_study
from persona_dynamics.toy import cached_build

# seconds on 2 idle cores; measured 2026-11-27: toy 102, generate 24, judge 11, adapters 28,
# capture 21, analyze 0.1, compare 2.7, place 3.4, report 1.5 (about 3x headroom each)
BUDGETS = {
    "toy": 180,
    "generate": 75,
    "judge": 40,
    "adapters": 90,
    "capture": 75,
    "analyze": 20,
    "compare": 20,
    "place": 20,
    "report": 15,
}
TOTAL = 600


def main() -> int:
    t0 = time.perf_counter()
    cached_build()
    seconds = {"toy": round(time.perf_counter() - t0, 1)}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = demo_config(Path(tmp))
        run_study(cfg)
        record = json.loads((cfg.output_root / "runs" / "demo.json").read_text())
    seconds |= record["seconds"]
    total = round(sum(seconds.values()), 1)
    over = [s for s, v in seconds.items() if v > BUDGETS[s]]
    ok = not over and total <= TOTAL
    line = {"bench": "demo", "seconds": seconds, "budgets": BUDGETS, "total_s": total,
            "total_budget_s": TOTAL, "over_budget": over, "within_budget": ok}  # fmt: skip
    print(json.dumps(line))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
