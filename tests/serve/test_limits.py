"""Keys and the work queue on their own, then a keyless server: loopback only, a full queue (429 with Retry-After)
and the request timeout (504), with nothing partial in the index."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from ragless.serve.auth import APIKeyError, KeyRing, allows, load_keys
from ragless.serve.queue import QueueFull, WorkQueue


def test_keys_parse_scope_and_refuse_bad_entries(tmp_path):
    keys = KeyRing.parse("# comment\n0123456789abcdef0123 read\n\nfedcba9876543210fedc admin\n")
    assert len(keys) == 2
    assert keys.scope_of("0123456789abcdef0123") == "read" and keys.scope_of("fedcba9876543210fedc") == "admin"
    assert keys.scope_of("0123456789abcdef012") is None and keys.scope_of("") is None and keys.scope_of(None) is None
    assert allows("admin", "read") and allows("read", "read") and not allows("read", "admin")
    assert not allows(None, "read")
    for text, reason in [("0123456789abcdef0123 write", "unknown scope"), ("short read", "at least 16"),
                         ("0123456789abcdef0123", "expected 'KEY SCOPE'"), ("# only comments", "no API keys")]:
        with pytest.raises(APIKeyError, match=reason) as e:
            KeyRing.parse(text)
        assert "0123456789abcdef0123" not in str(e.value)  # errors never repeat a key
    env = {"RAGLESS_API_KEYS": "0123456789abcdef0123 read,fedcba9876543210fedc admin"}
    assert len(load_keys(None, env)) == 2 and load_keys(None, {}) is None
    path = tmp_path / "keys"
    path.write_text("fedcba9876543210fedc admin\n")
    assert load_keys(path, env).scope_of("0123456789abcdef0123") is None  # the file wins over the variable
    with pytest.raises(APIKeyError, match="cannot read"):
        load_keys(tmp_path / "missing", {})


def test_work_queue_bounds_waiting_jobs_and_cancels_waiting_ones():
    work = WorkQueue(capacity=1)
    gate = threading.Event()
    running = work.submit(gate.wait, 30)
    deadline = time.monotonic() + 10
    while work.running == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting = work.submit(lambda: "ran")
    assert (work.running, work.depth) == (1, 1)
    with pytest.raises(QueueFull):
        work.submit(lambda: None)
    assert waiting.cancel() and work.depth == 0  # a cancelled waiting job never runs and frees its place
    again = work.submit(lambda: "ran")
    gate.set()
    assert running.result(10) is True and again.result(10) == "ran"
    assert (work.running, work.depth) == (0, 0)
    work.shutdown()


@pytest.mark.parametrize("flags,reason", [
    (["--queue-size", "-1"], "--queue-size must be at least 0"),
    (["--max-k", "0"], "--max-k must be at least 1"),
    (["--max-question-tokens", "0"], "--max-question-tokens must be at least 1"),
    (["--request-timeout-s", "0"], "--request-timeout-s must be positive"),
    (["--port", "70000"], "--port must be within 0..65535"),
    (["--nprobe", "0"], "--nprobe must be at least 1"),
    (["--candidates", "-1"], "--candidates must be at least 0"),
])
def test_settings_no_request_could_meet_are_refused_at_start(tmp_path, capsys, flags, reason):
    from ragless.cli import main

    assert main(["serve", "--index", str(tmp_path / "index"), *flags]) == 2  # before anything listens
    assert reason in capsys.readouterr().err


def test_ask_and_serve_take_the_ann_search_flags(tmp_path, capsys):
    from ragless.ann import AnnSearchConfig
    from ragless.cli import _ann_search, build_parser, main
    from ragless.serve.config import ServeConfig

    flags = ["--nprobe", "3", "--candidates", "7", "--ef-search", "9", "--no-ann"]
    given = AnnSearchConfig(use=False, nprobe=3, candidates=7, ef_search=9)
    for command in (["ask", "q", "--index", "x"], ["serve", "--index", "x"]):
        assert _ann_search(build_parser().parse_args(command + flags), command[0]) == given
        assert _ann_search(build_parser().parse_args(command), command[0]) == AnnSearchConfig()  # defaults as before
    assert ServeConfig().ann == AnnSearchConfig()
    assert main(["ask", "q", "--index", str(tmp_path), "--nprobe", "0"]) == 2
    assert "ragless ask: --nprobe must be at least 1" in capsys.readouterr().err
    for command in ("ask", "serve"):  # documented in --help, with their defaults
        with pytest.raises(SystemExit):
            main([command, "--help"])
        shown = " ".join(capsys.readouterr().out.split())
        assert "IVF lists scanned per question (recall against time) (default: 32)" in shown
        assert "--ef-search" in shown and "--candidates" in shown and "--no-ann: exact search" in shown


def test_the_default_k_fits_a_smaller_max_k():
    from ragless.serve.config import ServeConfig
    from ragless.serve.schemas import request_models

    AskIn, _ = request_models(ServeConfig(max_k=2))
    assert AskIn(question="q").k == 2 and AskIn.model_json_schema()["properties"]["k"]["default"] == 2


def test_without_keys_the_server_binds_to_loopback_only_and_says_so(open_server):
    assert open_server.host == "127.0.0.1"
    assert "no API keys configured: binding to 127.0.0.1, not 0.0.0.0" in open_server.log()
    with open_server.client() as c:
        assert c.get("/v1/documents").status_code == 200  # open access


def test_a_full_queue_answers_429_and_a_slow_job_504_with_nothing_partial(open_server):
    long_text = " ".join(f"Sentence {i} about the slow upload, which has property {i * 3}." for i in range(600))
    with open_server.client() as c:
        before = c.get("/v1/documents").json()
        result: dict[str, httpx.Response] = {}
        upload = threading.Thread(target=lambda: result.setdefault("r", c.post(
            "/v1/documents", json={"documents": [{"doc_id": "slow", "text": long_text}]})))
        upload.start()  # the encoder to load, then ~90 windows to embed: the worker is busy for seconds
        deadline = time.monotonic() + 30
        while "ragless_queue_running 1.0" not in c.get("/metrics").text:
            assert time.monotonic() < deadline and upload.is_alive()
            time.sleep(0.05)
        busy = c.post("/v1/documents", json={"documents": [{"doc_id": "second", "text": "Another document."}]})
        assert busy.status_code == 429 and busy.headers["Retry-After"] == "3", busy.text
        assert c.post("/v1/ask", json={"question": "anything?"}).status_code == 429
        upload.join(60)
        assert result["r"].status_code == 504 and "within 1 s" in result["r"].json()["detail"]
        # a running job is not interrupted: it commits whole, later (or, had it failed, not at all)
        open_server.wait_idle()
        after = c.get("/v1/documents").json()
        assert after["total"] == before["total"] + 1 and after["generation"] > before["generation"]
        assert c.get("/v1/documents/slow").json()["text"] == long_text
        assert c.get("/v1/documents/second").status_code == 404
        assert "ragless_queue_rejected_total 2.0" in c.get("/metrics").text
