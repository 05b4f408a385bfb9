"""`ragless serve` in its other modes, on one real server: the prompted answerer (``--answerer prompted``: SmolLM2
prompted with the sources, the evaluation's baseline) over an index with an IVF index, searched with the ANN flags
given on the command line, without API keys (open, on loopback)."""

from __future__ import annotations

import dataclasses

import pytest

from ragless.ann import AnnSearchConfig
from ragless.ask import AskConfig, Asker
from ragless.store import IndexReader
from tests.serve.test_serve_ask import check_verbatim, events

pytestmark = pytest.mark.slow  # SmolLM2 answers

# The flags of `prompted_server` (conftest.py): one of the 4 lists scanned (the default, 32, scans them all), so the
# weights are normalized over what that list holds, not over the whole memory as exact search normalizes them.
SEARCH = AnnSearchConfig(nprobe=1, candidates=40, ef_search=64)
QUESTION = "Which property does the violin number 2 have?"
VAGUE = "Tell me about the properties."  # no segment stands out: its weight is spread over the whole memory


def retrieved(asker: Asker, search: AnnSearchConfig, k: int) -> tuple[list[str], list[float]]:
    """(segment ids, weights) of the top ``k`` for VAGUE, searched in this process with ``search`` (one encoder for
    all: the reader and the settings change, as the server's `Service` changes its asker's reader)."""
    asker.cfg = dataclasses.replace(asker.cfg, ann=search)
    asker.reader = IndexReader(asker.reader.root, ann=search.use)
    sources = asker.retrieve([VAGUE], k=k)[0]
    return [s.seg_id for s in sources], [s.weight for s in sources]


def test_an_ivf_index_is_searched_with_the_flags_given(prompted_server):
    with prompted_server.client() as c:
        r = c.post("/v1/ask", json={"question": VAGUE, "k": 3})
        assert r.status_code == 200, r.text
        record = r.json()
        assert c.get("/readyz").json()["generation"] == record["generation"]
    served = [s["seg_id"] for s in record["sources"]], [s["weight"] for s in record["sources"]]
    asker = Asker(prompted_server.index, AskConfig(answerer="prompted"))  # the index's encoder asks, as served
    ids, weights = retrieved(asker, SEARCH, 3)  # in this process, with the same settings
    assert served[0] == ids and served[1] == pytest.approx(weights, rel=1e-4)
    # the flags made the difference: the defaults scan every list and weigh as exact search does
    exact_ids, exact_weights = retrieved(asker, AnnSearchConfig(use=False), 3)
    default_ids, default_weights = retrieved(asker, AnnSearchConfig(), 3)
    assert default_ids == exact_ids and default_weights == pytest.approx(exact_weights, rel=1e-4)
    # normalized over one list, not the whole memory: more weight on the same top 3 (by how much depends on how many
    # rows k-means put in the probed list: a factor 1.15 to 2 was seen, the partition varying with faiss' threads)
    assert sum(served[1]) > 1.02 * sum(exact_weights)


def test_the_prompted_answerer_answers_and_streams_its_record(prompted_server):
    with prompted_server.client() as c:
        question = {"question": QUESTION, "k": 2}
        record = c.post("/v1/ask", json=question).json()
        assert {"prompt_s", "generate_s", "cite_s", "retrieve_s"} <= set(record["timings"])  # the prompted path's
        assert record["abstained"] == (record["route"] == "abstain") and len(record["sources"]) == 2
        if not record["abstained"]:
            assert record["text"] and record["citations"]
        check_verbatim(c, record)  # bolted-on citations are still verbatim spans of their documents
        # it does not report its text as it decides it: the stream is the record alone, the same greedy answer
        r = c.post("/v1/ask", json={**question, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    got = events(r.text)
    assert [kind for kind, _ in got] == ["answer"]
    strip = lambda a: {k: v for k, v in a.items() if k != "timings"}  # noqa: E731
    assert strip(got[0][1]) == strip(record)
    assert "no API keys configured: open access, on loopback only" in prompted_server.log()
