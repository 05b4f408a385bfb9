"""Questions written by a language model (synth_pipeline/writers.py): the teacher endpoint's client, the round trip
through the shipped answer reader, the cache that makes a run resumable, errors, and the bundled generator.

The teacher is an external service (any OpenAI-compatible chat endpoint); here a small HTTP server in a thread speaks
that protocol and answers from a table, so that what is tested — our client, the round trip, the cache, the rows — runs
for real against a real socket."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ragless.cli import main
from retrieve_generate_model.reader import AnswerReader
from synth_pipeline.qa import QAConfig, draft_questions, make_examples
from synth_pipeline.writers import (
    OpenAIChat,
    QuestionWriter,
    WriterConfig,
    WriterError,
    clean,
    messages,
    reject_reason,
)
from tests.synth_pipeline.test_qa import TEXTS, lexical_retrieve, segments

READER = Path(__file__).resolve().parents[2] / "checkpoints" / "joint" / "reader"

# what the fake teacher answers, by the answer it is asked about (others: a reply without a question)
PARAPHRASES = {
    "Robert Stevenson": "Who was the engineer behind the Bell Rock Lighthouse?",
    "1810": "In which year was the Bell Rock Lighthouse completed?",
    "35 miles": "From what distance can the light be seen?",
    "1,100": "How many instruments did Stradivari make?",
    "1998": "In what year did the region produce 120,000 tonnes of apples?",
    "Cremona": "Did Stradivari work in Cremona?",  # holds its answer: rejected
    "September": "What does a violin have?",  # the reader answers "four strings": fails the round trip
}


class FakeTeacher:
    """An OpenAI-compatible /v1/chat/completions server on a free port; ``mode``: "ok", "401", "500", "garbage"."""

    def __init__(self, mode: str = "ok"):
        self.mode, self.requests = mode, []
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                teacher.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                if teacher.mode in ("401", "500"):
                    self.send_response(int(teacher.mode))
                    self.end_headers()
                    self.wfile.write(b'{"error": "no"}')
                    return
                answer = re.search(r"Answer \([^)]*\): (.*)$", body["messages"][-1]["content"]).group(1)
                reply = PARAPHRASES.get(answer, "I cannot think of one.")
                data = b"not json" if teacher.mode == "garbage" else json.dumps(
                    {"choices": [{"message": {"role": "assistant", "content": f"Question: {reply}"}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def reader():
    return AnswerReader.load(READER)


def teacher_config(url: str, **kw) -> WriterConfig:
    return WriterConfig(writer="teacher", teacher_url=url, teacher_model="fake-7b", **kw)


def test_prompt_and_reply_cleaning():
    m = messages("The bridge opened in 1932.", "1932", "year")
    assert m[0]["role"] == "system" and m[-1]["content"].endswith("Answer (a year): 1932")
    assert clean("Q: Where is it?") == "Where is it?" and clean("  \n'Why?'\nmore") == "Why?"
    assert clean("It opened in 1932.") is None and clean("") is None


def test_round_trip_through_the_reader(reader):
    text = TEXTS[0][1]
    assert reject_reason("In what year did the region produce 120,000 tonnes of apples?", "1998", TEXTS[1][1], reader,
                         0.5) is None
    assert reject_reason("Who built the lighthouse, Robert Stevenson?", "Robert Stevenson", text, reader,
                         0.5) == "holds_answer"
    assert reject_reason("When was the lighthouse built by its engineer?", "35 miles", text, reader,
                         0.5) == "round_trip"
    assert reject_reason("Why?", "1810", text, reader, 0.5) == "length"
    assert reject_reason(None, "1810", text, reader, 0.5) == "no_question"
    assert reject_reason("What is the blank in this sentence?", "1810", text, reader, 0.5) == "mentions_blank"


def test_teacher_questions_replace_the_rules_ones_after_the_round_trip_and_are_cached(tmp_path, reader):
    cache = tmp_path / "written.jsonl"
    cfg = QAConfig(unanswerable_fraction=0.0)
    drafts = [d for s in segments() for d in draft_questions(s, cfg, 0)]
    with FakeTeacher() as teacher:
        writer = QuestionWriter(teacher_config(teacher.url), reader, cache=cache)
        rows = list(make_examples(segments(), lexical_retrieve, cfg, seed=0, rewrite=writer))
        asked = len(teacher.requests)
    # every draft was offered (written_fraction 1), asked once each, plus the check before any work
    assert asked == len(drafts) + 1 and teacher.requests[0]["body"]["temperature"] == 0
    assert teacher.requests[1]["path"] == "/v1/chat/completions" and teacher.requests[1]["body"]["model"] == "fake-7b"
    report = writer.report()
    assert report["asked"] == len(drafts) and report["cached"] == 0
    written = [r for r in rows if r["question_origin"] == "teacher"]
    assert written and report["accepted"] == len(written)
    for r in written:  # the teacher's question, answerable by the reader from its evidence
        assert r["question"] in PARAPHRASES.values() and r["answer"] not in r["question"]
        evidence = next(s["text"] for s in r["sources"] if s["seg_id"] == r["seg_id"])
        assert reject_reason(r["question"], r["answer"], evidence, reader, 0.5) is None
    by_answer = {r["answer"]: r for r in rows}
    for answer in ("Cremona", "September"):  # rejected: the rules' question stays
        if answer in by_answer:
            assert by_answer[answer]["question_origin"] != "teacher"
    assert report["rejected"].get("no_question", 0) > 0  # "I cannot think of one."
    assert sum(report["rejected"].values()) + report["accepted"] == report["asked"]
    assert len(cache.read_text().splitlines()) == len(drafts)

    # a second run over the same cache asks nothing (the check aside) and makes the same rows
    with FakeTeacher() as teacher:
        again = QuestionWriter(teacher_config(teacher.url), reader, cache=cache)
        rows_again = list(make_examples(segments(), lexical_retrieve, cfg, seed=0, rewrite=again))
        assert len(teacher.requests) == 1
    assert rows_again == rows and again.report()["cached"] == len(drafts)


def test_written_fraction_offers_a_deterministic_share(tmp_path, reader):
    cfg = QAConfig(unanswerable_fraction=0.0)
    with FakeTeacher() as teacher:
        runs = []
        for _ in range(2):
            writer = QuestionWriter(teacher_config(teacher.url, written_fraction=0.5), reader)
            list(make_examples(segments(), lexical_retrieve, cfg, seed=0, rewrite=writer))
            runs.append(sorted(r["body"]["messages"][-1]["content"] for r in teacher.requests[1:]))  # any order
            teacher.requests.clear()
    total = sum(len(draft_questions(s, cfg, 0)) for s in segments())
    assert runs[0] == runs[1] and 0 < len(runs[0]) < total


def test_teacher_errors_are_clear_before_any_work_and_failed_requests_keep_the_rules_question(tmp_path, reader):
    with pytest.raises(WriterError, match="cannot be reached"):
        QuestionWriter(teacher_config("http://127.0.0.1:9/v1", teacher_timeout=2.0), reader)
    with FakeTeacher("401") as teacher, pytest.raises(WriterError, match="HTTP 401"):
        QuestionWriter(teacher_config(teacher.url), reader)
    with FakeTeacher("garbage") as teacher, pytest.raises(WriterError, match="OpenAI-compatible"):
        QuestionWriter(teacher_config(teacher.url), reader)
    with pytest.raises(ValueError, match="teacher-url"):
        WriterConfig(writer="teacher")

    # the endpoint fails mid-run: each request is tried 3 times, then the rules' question stays
    cfg = QAConfig(unanswerable_fraction=0.0)
    with FakeTeacher() as teacher:
        chat = OpenAIChat(teacher.url, "fake-7b", backoff=0.0)
        writer = QuestionWriter(teacher_config(teacher.url), reader, chat=chat)
        teacher.mode = "500"
        rows = list(make_examples(segments(), lexical_retrieve, cfg, seed=0, rewrite=writer))
        assert len(teacher.requests) == 3 * writer.report()["asked"]
    assert rows == list(make_examples(segments(), lexical_retrieve, cfg, seed=0))
    assert writer.report()["rejected"] == {"no_reply": writer.report()["asked"]}


def test_api_key_is_sent_as_a_bearer_token(monkeypatch, reader):
    monkeypatch.setenv("RAGLESS_TEACHER_API_KEY", "sk-test")
    with FakeTeacher() as teacher:
        QuestionWriter(teacher_config(teacher.url), reader)
        assert teacher.requests[0]["auth"] == "Bearer sk-test"


def test_synth_qa_with_a_teacher_end_to_end(tmp_path, encoder, capsys):
    from tests.ragless.test_ingest import ingest

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"d{i}", "title": t, "text": x}) + "\n"
                              for i, (t, x) in enumerate(TEXTS)), encoding="utf-8")
    index = tmp_path / "index"
    ingest(index, [corpus], encoder)
    out = tmp_path / "qa"
    with FakeTeacher() as teacher:
        code = main(["synth", "qa", "--index", str(index), "--out", str(out), "--writer", "teacher",
                     "--teacher-url", teacher.url, "--teacher-model", "fake-7b", "--round-trip-reader", str(READER),
                     "--heldout-fraction", "0"])
        std, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(std)
    assert summary["writer"]["writer"] == "teacher:fake-7b" and summary["writer"]["accepted"] > 0
    assert (out / "written.jsonl").is_file()
    origins = [r["question_origin"] for r in pq.read_table(out / "train.parquet").to_pylist()]
    assert origins.count("teacher") == summary["writer"]["accepted"]

    code = main(["synth", "qa", "--index", str(index), "--out", str(tmp_path / "x"), "--writer", "teacher"])
    assert code == 2 and "teacher-url" in capsys.readouterr().err
    code = main(["synth", "qa", "--index", str(index), "--out", str(tmp_path / "x"), "--writer", "teacher",
                 "--teacher-url", "http://127.0.0.1:9/v1", "--teacher-model", "m", "--teacher-timeout", "2"])
    assert code == 2 and "cannot be reached" in capsys.readouterr().err


@pytest.mark.slow
def test_the_bundled_generator_writes_questions(reader):
    cfg = QAConfig(unanswerable_fraction=0.0, questions_per_segment=1)
    writer = QuestionWriter(WriterConfig(writer="generator", writer_batch=2), reader)
    drafts = [d for s in segments()[:3] for d in draft_questions(s, cfg, 0)]
    out = writer(drafts)
    report = writer.report()
    assert report["writer"] == "generator:SmolLM2-135M-Instruct" and report["asked"] == len(drafts)
    assert sum(report["rejected"].values()) + report["accepted"] == len(drafts)
    prompts = [writer.prompt(d) for d in drafts]
    assert all(p[-2]["content"].count("___") == 1 and d.answer not in p[-2]["content"] for p, d in zip(prompts, drafts))
    replies = writer._replies(prompts)  # cached: the same replies again
    # asked with the answer blanked out, each reply goes on from the rules' question phrase
    assert all(isinstance(r, str) and r.startswith(p[-1]["content"]) and len(r) > len(p[-1]["content"])
               for r, p in zip(replies, prompts))
    # and ends at its first "?" (a token may carry a closing quote with it): nothing after it is read
    assert all("?" not in r or len(r) - r.index("?") <= 3 for r in replies)
    for d, o in zip(drafts, out):  # a written question passed the round trip; the others are the rules' drafts
        if o.origin == "generator":
            assert reject_reason(o.question, d.answer, d.segment.text, reader, 0.5) is None
        else:
            assert o == d


def test_the_module_doctests_pass():
    import doctest

    import synth_pipeline.writers as module

    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
