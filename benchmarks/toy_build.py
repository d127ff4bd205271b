"""Build time of the toy organism, from scratch into a temporary directory (the cache is untouched).

Prints one JSON line: wall and CPU seconds per build, the judge's held-out agreement and the
fraction of the SFT role-to-Assistant gap each stage closed (planted vs measured). With `--twice`
it builds again and reports whether every weight and tokenizer file is bit-identical.

    python benchmarks/toy_build.py --twice
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
from pathlib import Path

from persona_dynamics.toy import build


def digest(root: Path) -> str:
    """One hash over every weight and tokenizer file of a build."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.suffix == ".safetensors" or p.name == "tokenizer.json":
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


def main() -> None:
    """Build the default toy family once (or twice) and report its cost and plant."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--twice", action="store_true", help="build twice and compare the weights")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = [build(Path(tmp, str(i)), args.seed) for i in range(2 if args.twice else 1)]
        truth = runs[0].truth
        row = {
            "bench": "toy_build",
            "seed": args.seed,
            "wall_s": [r.truth["build_seconds"] for r in runs],
            "cpu_s": [r.truth["build_cpu_seconds"] for r in runs],
            "judge_agreement": truth["judge"]["held_out_agreement"],
            "planted": truth["expected_effect"],
            "closed": {s: round(v["closed"], 3) for s, v in truth["measured"].items()},
        }
        if args.twice:
            row["bit_identical"] = digest(runs[0].root) == digest(runs[1].root)
    print(json.dumps(row))


if __name__ == "__main__":
    main()
