"""bench/compare_runs.py: two runs' per-question rows paired by question id, refused when they ask other questions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / "compare_runs.py"), *args], capture_output=True,
                          text=True, cwd=ROOT)


def rows(f1: list[float], abstained: list[bool], second: list[float] | None = None) -> list[dict]:
    out = []
    for i, (f, a) in enumerate(zip(f1, abstained)):
        row = {"qid": f"q{i}", "f1": f, "em": float(f == 1.0), "abstained": a}
        if second is not None:
            row["second_round"] = second[i]
        out.append(row)
    return out


def test_runs_are_paired_by_question(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"ragless": rows([1.0, 0.0, 0.5, 0.0], [False, True, False, True])}))
    # the same questions in another order: pairing is by id; a run from before the second round has no such field
    other = rows([0.0, 1.0, 0.5, 1.0], [True, False, False, False], [1.0, 0.0, 0.0, 1.0])[::-1]
    b.write_text(json.dumps({"other": other, "more": []}))
    done = run("--a", str(a), "--b", f"{b}:other", "--out", str(tmp_path / "report.json"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n"] == 4 and report["answered"] == {"ragless": 2, "other": 3}
    f1 = report["metrics"]["f1"]
    assert (f1["a"], f1["b"], f1["diff"]) == (0.375, 0.625, 0.25)  # per question: -1, +1, 0, +1 after pairing by id
    assert report["metrics"]["second_round"]["a"] == 0.0 and report["metrics"]["second_round"]["b"] == 0.5

    assert "name one as FILE:SYSTEM" in run("--a", str(a), "--b", str(b)).stderr
    assert "no system 'nope'" in run("--a", str(a), "--b", f"{b}:nope").stderr
    c = tmp_path / "c.json"
    c.write_text(json.dumps({"ragless": rows([1.0, 0.0], [False, True])}))
    assert "not paired" in run("--a", str(a), "--b", str(c)).stderr
