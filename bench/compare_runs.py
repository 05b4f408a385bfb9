"""Paired comparison of two systems' per-question rows written by separate runs of `bench/eval.py --per-question`.

Two runs on the same dataset, sample and seed ask the same questions; this pairs them by question id and gives, for
each metric, both means and the paired bootstrap of the difference (`ragless.eval.metrics.paired_bootstrap`), so a
system re-run alone can be set against an earlier run of another without running both again.

    python bench/compare_runs.py --a data/per-question/squad-v1.1.articles.answers.v7.json:ragless \\
        --b data/per-question/squad-v1.1.articles.answers.json:ragless@data/runs/joint-rewrite
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path[:] = [str(Path(__file__).resolve().parents[1])] + [
    p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from ragless.eval import metrics as M  # noqa: E402

METRICS = ("em", "f1", "abstain_acc", "answerable_f1", "citation_precision", "second_round")


def rows_of(spec: str) -> tuple[str, dict[str, dict]]:
    """``FILE:SYSTEM`` (or FILE alone when it holds one system) -> (system, rows by question id)."""
    path, _, system = spec.partition(":") if not Path(spec).is_file() else (spec, "", "")
    runs = json.loads(Path(path).read_text())
    if not system:
        if len(runs) != 1:
            raise SystemExit(f"{path} holds {sorted(runs)}: name one as FILE:SYSTEM")
        system = next(iter(runs))
    if system not in runs:
        raise SystemExit(f"{path} has no system {system!r}; it has {sorted(runs)}")
    return system, {r["qid"]: r for r in runs[system]}


def value(row: dict, metric: str) -> float | None:
    """A row's metric; a row of a run made before the second retrieval round existed took one round."""
    return row.get(metric, 0.0) if metric == "second_round" else row.get(metric)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="FILE:SYSTEM, the reference")
    ap.add_argument("--b", required=True, help="FILE:SYSTEM, set against it (b - a)")
    ap.add_argument("--out", help="JSON report")
    args = ap.parse_args()
    (name_a, a), (name_b, b) = rows_of(args.a), rows_of(args.b)
    shared = sorted(set(a) & set(b))
    if len(shared) != len(a) or len(shared) != len(b):
        raise SystemExit(f"the runs ask different questions ({len(a)} and {len(b)}, {len(shared)} shared): not paired")
    report = {"a": name_a, "b": name_b, "n": len(shared),
              "command": "python bench/compare_runs.py " + " ".join(sys.argv[1:]), "metrics": {}}
    for metric in METRICS:
        xa, xb = [value(a[q], metric) for q in shared], [value(b[q], metric) for q in shared]
        if all(x is None for x in xa + xb):
            continue
        d = M.paired_bootstrap(xb, xa)
        means = [M.mean_defined(x) for x in (xa, xb)]
        report["metrics"][metric] = {"a": None if means[0] is None else round(means[0], 4),
                                     "b": None if means[1] is None else round(means[1], 4),
                                     **{k: None if v is None else round(v, 4) for k, v in d.items()}}
    answered = {n: sum(not r["abstained"] for r in rows.values()) for n, rows in ((name_a, a), (name_b, b))}
    report["answered"] = answered
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
