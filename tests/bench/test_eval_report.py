"""bench/eval.py's bookkeeping: re-running one system replaces only its results, and the table says when it ran."""

from __future__ import annotations

from bench.eval import _reruns, merge


def _result(system: str, value: float, run: dict | None = None) -> dict:
    return {"system": system, "metrics": {"recall@1": value}, **({"run": run} if run else {})}


def test_a_rerun_system_replaces_its_result_and_keeps_the_others_in_order():
    first = {"commit": "aaa", "date": "2026-11-29", "wall_s": 10.0}
    report = {"command": "ragless eval ...", "wall_s": 100.0,
              "results": [_result("workflow-bm25", 0.5, first), _result("workflow-dense", 0.4, first),
                          _result("ragless", 0.4, first)]}
    later = {"commit": "bbb", "date": "2026-12-02", "wall_s": 5.0}
    merged = merge(report, [_result("ragless", 0.45, later)], 5.0)
    assert [r["system"] for r in merged["results"]] == ["workflow-bm25", "workflow-dense", "ragless"]
    assert [r["metrics"]["recall@1"] for r in merged["results"]] == [0.5, 0.4, 0.45]
    assert merged["wall_s"] == 105.0 and merged["command"] == report["command"]
    assert report["results"][2]["metrics"]["recall@1"] == 0.4  # the loaded report is not modified
    assert _reruns(merged) == "; ragless re-run at commit bbb (2026-12-02)"
    assert _reruns(report) == ""
    # a system the report did not have is appended; reports older than per-result runs count as the first run
    old = {"wall_s": 1.0, "results": [_result("workflow-bm25", 0.5)]}
    merged = merge(old, [_result("ragless", 0.3, later)], 2.0)
    assert [r["system"] for r in merged["results"]] == ["workflow-bm25", "ragless"]
    assert _reruns(merged) == "; ragless re-run at commit bbb (2026-12-02)"
