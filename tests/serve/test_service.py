"""The server's logic without HTTP (`ragless.serve.service`): a new index made by the first upload, documents read
by the readers of `ragless ingest`, filters."""

from __future__ import annotations

import pytest

from ragless.serve.config import ServeConfig
from ragless.serve.service import BadDocuments, Filters, Service, documents_from_json, documents_from_uploads
from retrieve_generate_model.records import Source


def test_the_first_upload_makes_the_index(tmp_path):
    service = Service(tmp_path / "new", ServeConfig(segmenter="fixed-window", preload=False))
    assert service.reader() is None and service.list_documents(0, 10, None) == {"generation": 0, "total": 0,
                                                                                 "documents": []}
    docs = documents_from_json([{"text": "Tides follow the moon.\nTwice a day.", "title": "Tides", "source": "",
                                 "doc_id": None, "meta": {"k": 1}}], 10**6)
    assert docs[0].source == f"api:{docs[0].doc_id}" and docs[0].meta["fields"] == {"k": 1}
    result = service.ingest(docs)
    assert result["generation"] >= 1 and result["documents"][0]["status"] == "added"
    assert service.reader().generation == result["generation"]
    got = service.get_document(docs[0].doc_id)
    assert got["text"] == "Tides follow the moon.\nTwice a day." and got["segments"]
    assert service.ingest(docs)["documents"][0]["status"] == "unchanged"
    assert service.delete(docs[0].doc_id) > result["generation"] and service.delete(docs[0].doc_id) is None
    manifest = service.reader().manifest["components"]
    assert manifest["segmenter"]["name"] == "fixed-window" and "lexical" in manifest  # the shipped channel


def test_documents_are_read_as_ragless_ingest_reads_them():
    same = [{"text": "Same text.", "doc_id": None, "title": "", "source": "", "meta": {}}]
    assert documents_from_json(same, 10**6)[0].doc_id == documents_from_json(same, 10**6)[0].doc_id
    html = documents_from_uploads([("page.html", b"<html><title>T</title><body><nav>menu</nav><p>Body text.</p>"
                                                 b"</body></html>")], 10**6)[0]
    assert html.source == "upload:page.html" and html.title == "T" and "Body text." in html.text
    with pytest.raises(BadDocuments) as e:
        documents_from_uploads([("big.txt", b"x" * 100)], 50)
    assert e.value.status == 422 and "too large" in e.value.reasons[0]["reason"]


def test_filters():
    s = Source("s", "d1", 1.0, "t", 0, 1, source="/docs/a.txt", title="A")
    fields = {"d1": {"lang": "en", "year": 2020}}.get
    assert Filters().passes(s, fields) and not Filters()
    assert Filters(doc_ids=frozenset({"d1"}), source_prefix="/docs/", title="A").passes(s, fields)
    assert not Filters(doc_ids=frozenset({"d2"})).passes(s, fields)
    assert not Filters(source_prefix="/other").passes(s, fields)
    assert Filters(meta={"lang": "en", "year": 2020}).passes(s, fields)
    assert not Filters(meta={"year": "2020"}).passes(s, fields)  # types count: "2020" is not 2020
    assert not Filters(meta={"missing": 1}).passes(s, fields)
