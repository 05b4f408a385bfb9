"""The evaluation notebooks (notebooks/*.ipynb) run end to end, so they cannot rot.

Each notebook is executed with nbclient on the tiny made-up benchmark folder of the eval tests, with a question
limit of 2, and must finish without error and leave its PNGs in the out folder. The kernel is this interpreter
(the venv's python), through a kernelspec written for the test, whatever kernelspecs the machine has installed.
The notebooks that generate answers load SmolLM2 and are marked slow.

The notebooks share one kernel, each starting as in a fresh one: an empty namespace (``%reset -f``), its own working
folder and the test's environment variables. What carries over is what Python keeps per process, imported modules and
models loaded once: a fresh kernel per notebook spent most of a notebook's time importing torch and transformers.
"""

from __future__ import annotations

import copy
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.utils import run_sync
from nbclient import NotebookClient

sys.path.insert(0, str(Path(__file__).parents[1] / "ragless" / "eval"))
from benchdata import write_benchmark_data  # noqa: E402

NOTEBOOKS = Path(__file__).parents[2] / "notebooks"
ALL_SYSTEMS = "workflow-bm25,workflow-dense,ragless"


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    """A kernel of this very interpreter, for the module's notebooks (see the module docstring)."""
    specs = tmp_path_factory.mktemp("kernels")
    write_kernel_spec(specs / "python3")  # argv: [sys.executable, "-m", "ipykernel_launcher", ...]
    km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(specs)]))
    run_sync(km.start_kernel)(cwd=str(specs))
    yield km
    run_sync(km.shutdown_kernel)(now=True)


# a fresh kernel's state, but for the modules it imported: nothing bound in the namespace (not even `os`)
FRESH = """%reset -f
__import__("os").chdir({cwd!r})
__import__("os").environ.clear()
__import__("os").environ.update({env!r})"""


def execute(nb: nbformat.NotebookNode, workdir: Path, km: AsyncKernelManager,
            timeout: int = 600) -> nbformat.NotebookNode:
    """Run ``nb`` in ``workdir`` on ``km``'s kernel, with this process's environment, as in a fresh kernel; raises
    CellExecutionError on any error."""
    if not run_sync(km.is_alive)():  # a notebook before killed it
        run_sync(km.restart_kernel)(now=True)
    fresh = nbformat.v4.new_code_cell(FRESH.format(cwd=str(workdir), env=dict(os.environ)))
    if nb.nbformat_minor < 5:  # cells have ids from 4.5 on
        del fresh["id"]
    run = copy.deepcopy(nb)
    run.cells.insert(0, fresh)
    client = NotebookClient(run, km=km, timeout=timeout, resources={"metadata": {"path": str(workdir)}})
    try:
        executed = client.execute()
    except BaseException:  # the kernel may still be busy with the failed cell: the next notebook gets a new one
        run_sync(km.restart_kernel)(now=True)
        raise
    finally:
        if client.kc is not None:  # the kernel is the fixture's: only this client's channels are closed
            client.kc.stop_channels()
    executed.cells = executed.cells[1:]
    return executed


def run_notebook(name: str, tmp_path: Path, monkeypatch, kernel, systems: str, limit: int = 2) -> Path:
    """Execute notebooks/<name>.ipynb on the tiny benchmark folder; returns its figures folder."""
    out = tmp_path / "figures"
    monkeypatch.setenv("RAGLESS_DATA", str(write_benchmark_data(tmp_path)))
    monkeypatch.setenv("RAGLESS_NB_LIMIT", str(limit))
    monkeypatch.setenv("RAGLESS_NB_OUT", str(out))
    monkeypatch.setenv("RAGLESS_NB_SYSTEMS", systems)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    execute(nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4), tmp_path, kernel)
    return out


def assert_pngs(out: Path, names: set[str]) -> None:
    assert {p.name for p in out.glob("*.png")} == names
    for name in names:
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name


def test_kernel_is_this_interpreter_and_each_notebook_starts_afresh(tmp_path, monkeypatch, kernel):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)"),
                                         nbformat.v4.new_code_cell("import os; os.environ['LEFT'] = '1'; left = 1")])
    executed = execute(nb, tmp_path, kernel, timeout=60)
    assert executed.cells[0].outputs[0]["text"].strip() == sys.executable
    (tmp_path / "next").mkdir()
    monkeypatch.setenv("RAGLESS_NB_PROBE", "seen")
    check = "import json as _j, os as _o; print(_j.dumps([dir(), _o.getcwd(), dict(_o.environ)]))"
    executed = execute(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(check)]), tmp_path / "next", kernel,
                       timeout=60)
    names, cwd, env = json.loads(executed.cells[0].outputs[0]["text"])
    assert not {"left", "os", "sys"} & set(names) and cwd == str(tmp_path / "next")
    assert env == dict(os.environ)  # the test's variables; none the last notebook set


def test_notebooks_are_committed_without_outputs_and_compile():
    """Small diffs, and a syntax error in a slow notebook shows up in the fast tests too."""
    names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["answer_quality", "languages", "latency", "retrieval_quality", "rl_training", "segmentation"]
    for name in names:
        nb = json.loads((NOTEBOOKS / f"{name}.ipynb").read_text(encoding="utf-8"))
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, f"{name}: clear the outputs"
                compile("".join(cell["source"]), f"{name}.ipynb cell {i}", "exec")


def test_retrieval_quality(tmp_path, monkeypatch, kernel):
    out = run_notebook("retrieval_quality", tmp_path, monkeypatch, kernel, ALL_SYSTEMS)
    assert_pngs(out, {"retrieval_recall_at_k.png"})


def test_languages(tmp_path, monkeypatch, kernel):
    # the tiny folder holds xquad "de" and "en"
    out = run_notebook("languages", tmp_path, monkeypatch, kernel, ALL_SYSTEMS)
    assert_pngs(out, {"languages_recall5_ndcg10.png"})


def test_segmentation(tmp_path, monkeypatch, kernel):
    # the shipped segmenter on tiny pages
    out = run_notebook("segmentation", tmp_path, monkeypatch, kernel, ALL_SYSTEMS)
    assert_pngs(out, {"segmentation_lengths.png", "segmentation_cuts.png"})


def test_rl_training(tmp_path, monkeypatch, kernel):
    """The RL notebook on logs in the trainers' format and a real paired comparison of the harness."""
    from ragless.eval.harness import EvalConfig, compare, evaluate

    joint, seg = tmp_path / "joint.jsonl", tmp_path / "seg.jsonl"
    names = ("answer_f1", "answer_exact_match", "quote_validity", "citation_support", "citation_precision",
             "citation_recall", "format_validity", "abstention", "brevity", "retrieval")
    joint.write_text("".join(json.dumps(
        {"step": s, "reward": 1 + 0.1 * s, "components": {n: 0.5 + 0.01 * s for n in names}, "loss": 0.1,
         "kl": 0.01 * s, "clip_fraction": 0.0, "ratio": 1.0, "learned_from": 12, "abstained": s % 4, "rollouts": 16,
         "sample_s": 50.0, "step_s": 120.0}) + "\n" for s in range(1, 9)))
    seg.write_text("".join(json.dumps(
        {"step": s, "evidence": 0.5, "answer_f1": 0.3 + 0.01 * s, "segments": 30.0, "changed_units": 0.05,
         "reward": 0.8 + 0.01 * s, "kl": 0.001 * s, "loss": -0.01, "step_s": 40.0}) + "\n" for s in range(1, 7)))
    cfg = EvalConfig(dataset="squad-v2.0", data=str(write_benchmark_data(tmp_path / "own")), corpus="gold",
                     systems=("workflow-bm25", "workflow-dense"), limit=0, retrieval_only=True, bootstrap=100)
    report = evaluate(cfg, progress=lambda _: None)
    report["compare"] = compare(report, n_resamples=100)
    (tmp_path / "compare").mkdir()
    (tmp_path / "compare" / "squad-v2.0.json").write_text(json.dumps(report))
    monkeypatch.setenv("RAGLESS_NB_JOINT_LOG", str(joint))
    monkeypatch.setenv("RAGLESS_NB_SEGMENTER_LOG", str(seg))
    monkeypatch.setenv("RAGLESS_NB_COMPARE", str(tmp_path / "compare"))
    out = run_notebook("rl_training", tmp_path, monkeypatch, kernel, ALL_SYSTEMS)
    assert_pngs(out, {"rl_joint_curves.png", "rl_segmenter_curves.png", "rl_vs_sft.png"})


@pytest.mark.slow
def test_answer_quality(tmp_path, monkeypatch, kernel):
    out = run_notebook("answer_quality", tmp_path, monkeypatch, kernel, "workflow-bm25,ragless")
    assert_pngs(out, {"answer_quality_by_kind.png"})


@pytest.mark.slow
def test_latency(tmp_path, monkeypatch, kernel):
    out = run_notebook("latency", tmp_path, monkeypatch, kernel, "workflow-bm25,ragless")
    assert_pngs(out, {"latency_by_stage.png", "latency_answer_hist.png"})
