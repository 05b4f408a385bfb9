"""The endpoint without the generator: documents CRUD, uploads, auth, limits and every bad input, metrics, the
OpenAPI document, and generations committed by another writer — against a real server process on loopback."""

from __future__ import annotations

import re
import socket

import httpx
import pytest

from ragless.store import IndexReader
from tests.ragless.test_ingest import ingest, write_corpus
from tests.serve.conftest import ADMIN_KEY, READ_KEY


@pytest.fixture(scope="module")
def admin(docs_server):
    with docs_server.client(ADMIN_KEY) as c:
        yield c


@pytest.fixture(scope="module")
def reader(docs_server):
    with docs_server.client(READ_KEY) as c:
        yield c


def state(client) -> tuple[int, int]:
    listing = client.get("/v1/documents", params={"limit": 1000}).json()
    return listing["generation"], listing["total"]


def test_health_readiness_and_the_openapi_document(docs_server, reader):
    with docs_server.client() as anonymous:
        assert anonymous.get("/healthz").json() == {"status": "ok"}
        ready = anonymous.get("/readyz")
        assert ready.status_code == 200 and ready.json()["documents"] == 8
        spec = anonymous.get("/openapi.json").json()
    assert {"/v1/ask", "/v1/documents", "/v1/documents/{doc_id}", "/healthz", "/readyz", "/metrics"} <= set(
        spec["paths"])
    assert set(spec["paths"]["/v1/documents/{doc_id}"]) == {"get", "delete"}
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    body = spec["paths"]["/v1/documents"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} == set(body)
    ask = spec["paths"]["/v1/ask"]["post"]
    assert {"200", "401", "403", "413", "422", "429", "503", "504"} <= set(ask["responses"])
    assert "text/event-stream" in ask["responses"]["200"]["content"]
    schema = spec["components"]["schemas"]["AskIn"]
    assert schema["properties"]["question"]["maxLength"] == 200 and schema["properties"]["k"]["maximum"] == 10
    assert schema["additionalProperties"] is False
    assert set(spec["components"]["schemas"]["Filters"]["properties"]) == {"doc_ids", "source_prefix", "title", "meta"}


def test_documents_crud_json(admin, reader):
    generation, total = state(reader)
    doc = {"doc_id": "zep-77", "title": "Zeppelin", "text": "The zeppelin 77 is painted bright orange.\n\nIt flies "
           "over the harbour every Sunday.", "meta": {"lang": "en", "year": 1931}}
    r = admin.post("/v1/documents", json={"documents": [doc]})
    assert r.status_code == 200, r.text
    assert r.json()["documents"] == [{"doc_id": "zep-77", "source": "api:zep-77", "title": "Zeppelin",
                                      "status": "added"}]
    assert r.json()["generation"] > generation
    assert state(reader) == (r.json()["generation"], total + 1)  # visible at once, no restart

    got = reader.get("/v1/documents/zep-77").json()
    assert got["text"] == doc["text"] and got["meta"]["fields"] == {"lang": "en", "year": 1931}
    assert got["segments"] and all(got["text"][s["char_start"]: s["char_end"]] == s["text"] for s in got["segments"])
    listed = reader.get("/v1/documents", params={"source_prefix": "api:"}).json()
    assert [d["doc_id"] for d in listed["documents"]] == ["zep-77"]

    again = admin.post("/v1/documents", json={"documents": [doc]}).json()
    assert again["documents"][0]["status"] == "unchanged"
    changed = admin.post("/v1/documents", json={"documents": [{**doc, "text": "The zeppelin 77 is now green."}]})
    assert changed.json()["documents"][0]["status"] == "replaced"
    assert reader.get("/v1/documents/zep-77").json()["text"] == "The zeppelin 77 is now green."

    removed = admin.delete("/v1/documents/zep-77")
    assert removed.status_code == 200 and removed.json()["doc_id"] == "zep-77"
    assert reader.get("/v1/documents/zep-77").status_code == 404
    assert admin.delete("/v1/documents/zep-77").status_code == 404
    assert state(reader)[1] == total


def test_documents_upload_files(admin, reader):
    files = [("files", ("guide.md", b"# Kites\n\nA kite needs wind of 10 to 20 km/h.\n", "text/markdown")),
             ("files", ("notes.txt", "Caf\u00e9 notes: the espresso machine is descaled monthly.\n".encode(),
                        "text/plain"))]
    r = admin.post("/v1/documents", files=files)
    assert r.status_code == 200, r.text
    docs = {d["source"]: d for d in r.json()["documents"]}
    assert set(docs) == {"upload:guide.md", "upload:notes.txt"} and docs["upload:guide.md"]["title"] == "Kites"
    assert admin.post("/v1/documents", files=files[:1]).json()["documents"][0]["status"] == "unchanged"
    got = reader.get(f"/v1/documents/{docs['upload:notes.txt']['doc_id']}").json()
    assert got["text"].startswith("Café notes")
    for d in docs.values():
        assert admin.delete(f"/v1/documents/{d['doc_id']}").status_code == 200


BAD_UPLOADS = [
    ("binary text", [("files", ("data.txt", b"\x00\x01\x02binary\x00" * 50, "text/plain"))], 422, "binary"),
    ("unsupported type", [("files", ("tool.exe", b"MZ\x90\x00", "application/octet-stream"))], 415, "unsupported"),
    ("container", [("files", ("records.jsonl", b'{"text": "a"}\n', "application/json"))], 415, "JSON documents"),
    ("path in the name", [("files", ("../../etc/passwd.txt", b"root", "text/plain"))], 400, "no '/'"),
    ("backslashes", [("files", ("..\\..\\x.txt", b"x", "text/plain"))], 400, "no '/'"),
    ("empty file", [("files", ("empty.txt", b"", "text/plain"))], 422, "empty"),
    ("broken pdf", [("files", ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog", "application/pdf"))], 422,
     "pdf"),
    ("one bad of two", [("files", ("good.txt", b"A good file about tides.", "text/plain")),
                        ("files", ("bad.txt", b"\x00\x00\x00", "text/plain"))], 422, "binary"),
    ("the same name twice", [("files", ("a.txt", b"one", "text/plain")), ("files", ("a.txt", b"two", "text/plain"))],
     422, "twice"),
    ("too many files", [("files", (f"f{i}.txt", b"text", "text/plain")) for i in range(6)], 400, "Too many files"),
]


@pytest.mark.parametrize("name,files,status,reason", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_get_a_4xx_with_a_reason_and_write_nothing(admin, reader, name, files, status, reason):
    before = state(reader)
    r = admin.post("/v1/documents", files=files)
    assert r.status_code == status, r.text
    assert reason.lower() in r.text.lower()
    assert state(reader) == before  # nothing written, not even part of the request


def test_a_form_field_that_is_not_a_file_is_refused(admin, reader):
    before = state(reader)
    r = admin.post("/v1/documents", files=[("files", (None, b"just a string"))])  # a part with no file name
    assert r.status_code == 422 and "files" in r.text
    assert admin.post("/v1/documents", data={"files": "x"}).status_code == 415  # urlencoded: not files
    assert admin.post("/v1/documents", data={"other": "x"}, files=[("files", ("a.txt", b"a", "text/plain"))]) \
        .status_code == 422
    assert state(reader) == before


BAD_JSON = [
    ("malformed", b'{"documents": [', "json_invalid"),
    ("not UTF-8", b'{"documents": [{"text": "\xff\xfe"}]}', "json_invalid"),
    ("unknown field", b'{"documents": [{"text": "x", "colour": "red"}]}', "extra_forbidden"),
    ("wrong type", b'{"documents": [{"text": 42}]}', "string_type"),
    ("a number as a string is not coerced", b'{"documents": [{"text": "x", "meta": {"n": [1]}}]}', "meta"),
    ("nested meta", b'{"documents": [{"text": "x", "meta": {"a": {"b": 1}}}]}', "meta"),
    ("NUL bytes", b'{"documents": [{"text": "abc\\u0000def"}]}', "binary"),
    ("path as doc_id", b'{"documents": [{"text": "x", "doc_id": "../../etc/passwd"}]}', "pattern"),
    ("dot doc_id", b'{"documents": [{"text": "x", "doc_id": ".."}]}', "pattern"),
    ("dot part in doc_id", b'{"documents": [{"text": "x", "doc_id": "docs/./a.md"}]}', "pattern"),
    ("absolute doc_id", b'{"documents": [{"text": "x", "doc_id": "/etc/passwd"}]}', "pattern"),
    ("empty part in doc_id", b'{"documents": [{"text": "x", "doc_id": "docs//a.md"}]}', "pattern"),
    ("trailing slash doc_id", b'{"documents": [{"text": "x", "doc_id": "docs/"}]}', "pattern"),
    ("backslash doc_id", b'{"documents": [{"text": "x", "doc_id": "docs\\\\a.md"}]}', "pattern"),
    ("long doc_id", ('{"documents": [{"text": "x", "doc_id": "' + "a/" * 128 + 'a"}]}').encode(), "at most 256"),
    ("duplicate ids", b'{"documents": [{"text": "x", "doc_id": "d1"}, {"text": "y", "doc_id": "d1"}]}', "twice"),
    ("meta key clash", b'{"documents": [{"text": "x", "meta": {"title": "t"}}]}', "document fields"),
    ("no documents", b'{"documents": []}', "too_short"),
    ("too many documents", ('{"documents": [' + ",".join(['{"text": "x"}'] * 6) + "]}").encode(), "too_long"),
    ("blank text", b'{"documents": [{"text": "   "}]}', "empty"),
    ("not an object", b'[1, 2]', "model_type"),
    ("NaN", b'{"documents": [{"text": "x", "meta": {"k": NaN}}]}', "finite"),
    ("Infinity", b'{"documents": [{"text": "x", "meta": {"k": 1e400}}]}', "finite"),
    ("deeply nested", b'{"documents": ' + b"[" * 1500 + b"]" * 1500 + b"}", "recursion"),
]


@pytest.mark.parametrize("name,body,reason", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_bad_json_documents_get_4xx_and_write_nothing(admin, reader, name, body, reason):
    before = state(reader)
    r = admin.post("/v1/documents", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code in (400, 415, 422), r.text
    assert reason.lower() in r.text.lower(), r.text
    assert state(reader) == before


BAD_ASKS = [
    ("malformed", b'{"question": ', 422),
    ("unknown field", b'{"question": "q", "temperature": 2}', 422),
    ("k too large", b'{"question": "q", "k": 11}', 422),
    ("k zero", b'{"question": "q", "k": 0}', 422),
    ("blank question", b'{"question": "   "}', 422),
    ("question too long", ('{"question": "' + "x" * 201 + '"}').encode(), 422),
    # 120 characters, but 3 tokens each: a question is measured in the model's tokens too (2000 emoji would hold the
    # one model worker for minutes)
    ("too many tokens", ('{"question": "' + "\U0001F600" * 120 + '"}').encode(), 422),
    ("unknown filter", b'{"question": "q", "filters": {"author": "me"}}', 422),
    ("filter of the wrong type", b'{"question": "q", "filters": {"doc_ids": "abc"}}', 422),
    ("empty doc_ids", b'{"question": "q", "filters": {"doc_ids": []}}', 422),
    ("stream not a bool", b'{"question": "q", "stream": "yes"}', 422),
    ("binary body", bytes(range(256)), 422),
    ("deeply nested", b"[" * 2000 + b"]" * 2000, 400),
    ("lone surrogate", b'{"question": "\\ud800"}', 422),
]


@pytest.mark.parametrize("name,body,status", BAD_ASKS, ids=[b[0] for b in BAD_ASKS])
def test_bad_questions_get_4xx_without_reaching_the_model(reader, name, body, status):
    r = reader.post("/v1/ask", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["detail"]


@pytest.mark.parametrize("k", ["4.0", "10.0", "2.5", "1e400", "true", "false", '"4"', "null", "[4]"])
def test_k_is_a_json_integer_literal(docs_server, reader, k):
    """A float with no fraction, a boolean or a numeric string is refused as "not an integer" (strict), never
    coerced, and never a 500 — as the OpenAPI document's description of k says."""
    r = reader.post("/v1/ask", content=b'{"question": "q", "k": ' + k.encode() + b"}",
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == [{"loc": ["body", "k"], "msg": "Input should be a valid integer", "type": "int_type"}]
    with docs_server.client() as anonymous:
        described = anonymous.get("/openapi.json").json()["components"]["schemas"]["AskIn"]["properties"]["k"]
    assert described["type"] == "integer" and "4.0" in described["description"] and "true" in described["description"]


def test_questions_are_measured_in_tokens(docs_server, reader):
    r = reader.post("/v1/ask", json={"question": "Why? " * 39})  # 195 characters, 79 tokens
    assert r.status_code == 422 and r.json()["detail"] == ("the question is 79 tokens long (SmolLM2's tokenizer); "
                                                           "the limit is 40")
    with docs_server.client() as anonymous:
        described = anonymous.get("/openapi.json").json()["components"]["schemas"]["AskIn"]["properties"]
    assert "at most 40 tokens" in described["question"]["description"]


def test_body_limits_before_parsing(docs_server, reader, admin):
    big = b'{"question": "' + b"x" * 5000 + b'"}'
    r = reader.post("/v1/ask", content=big, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "4096" in r.json()["detail"]

    def chunks():  # no Content-Length: the cap holds while the body streams in
        for _ in range(10):
            yield b"x" * 1000

    r = reader.post("/v1/ask", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413
    before = state(reader)
    r = admin.post("/v1/documents", files=[("files", ("big.txt", b"word " * 20000, "text/plain"))])
    assert r.status_code == 413 and "65536" in r.json()["detail"]
    assert state(reader) == before
    # a Content-Length that is not a number (no client library sends one: a raw socket)
    with socket.create_connection((docs_server.host, docs_server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/ask HTTP/1.1\r\nHost: x\r\nContent-Length: x\r\n\r\n{}")
        assert sock.recv(200).split(b" ")[1] == b"400"  # uvicorn's parser refuses it before the app


def test_ids_with_slashes_are_fetched_and_deleted_by_url(docs_server, admin, reader, encoder, tmp_path):
    """Ids derived from paths (`docs/a.md`) are the rest of the URL path, as they are or with '/' escaped."""
    doc = {"doc_id": "docs/guide/kites.md", "title": "Kites", "text": "A kite needs wind.\nIt flies on a string."}
    assert admin.post("/v1/documents", json={"documents": [doc]}).json()["documents"][0]["status"] == "added"
    for path in ("/v1/documents/docs/guide/kites.md", "/v1/documents/docs%2Fguide%2Fkites.md"):
        got = reader.get(path)
        assert got.status_code == 200, got.text
        assert got.json()["doc_id"] == doc["doc_id"] and got.json()["text"] == doc["text"]
        assert [s["text"] for s in got.json()["segments"]] == ["A kite needs wind.\nIt flies on a string."]
    assert reader.get("/v1/documents/docs/guide").status_code == 404  # a prefix is not the document
    removed = admin.delete("/v1/documents/docs/guide/kites.md")
    assert removed.status_code == 200 and removed.json()["doc_id"] == doc["doc_id"]
    assert reader.get("/v1/documents/docs/guide/kites.md").status_code == 404

    # records of a JSONL file keep their own ids (`ragless ingest` in another process, in effect)
    records = tmp_path / "records.jsonl"
    records.write_text('{"id": "notes/2024/tides.txt", "text": "Tides follow the moon, twice a day."}\n')
    ingest(docs_server.index, [records], encoder)
    got = reader.get("/v1/documents/notes/2024/tides.txt")
    assert got.status_code == 200 and got.json()["text"] == "Tides follow the moon, twice a day.", got.text
    assert admin.delete("/v1/documents/notes%2F2024%2Ftides.txt").status_code == 200
    assert reader.get("/v1/documents/notes/2024/tides.txt").status_code == 404


PATH_TRICKS = [
    ("/v1/documents/..%2F..%2Fetc%2Fpasswd", 400, "'..' part"),
    ("/v1/documents/docs/..%2F..%2Fsecret", 400, "'..' part"),
    ("/v1/documents/%2e%2e", 400, "'..' part"),
    ("/v1/documents/%2E%2E/x", 400, "'..' part"),
    ("/v1/documents/%2e", 400, "'.' or '..' part"),
    ("/v1/documents/a/%2e/b", 400, "'.' or '..' part"),
    ("/v1/documents/%2Fetc%2Fpasswd", 400, "absolute"),
    ("/v1/documents//etc/passwd", 400, "absolute"),
    ("/v1/documents/a//b", 400, "empty part"),
    ("/v1/documents/a/", 400, "empty part"),
    ("/v1/documents/a%00b", 400, "control"),
    ("/v1/documents/a%01b", 400, "control"),
    ("/v1/documents/a%5Cb", 400, "backslash"),
    ("/v1/documents/..%5C..%5Cwin.ini", 400, "backslash"),
    ("/v1/documents/", 422, "at least 1 character"),
    ("/v1/documents/" + "a" * 257, 422, "at most 256"),
    ("/v1/documents/no-such-document", 404, "no document"),
    ("/v1/documents/docs/no-such.md", 404, "no document"),
]


@pytest.mark.parametrize("path,status,reason", PATH_TRICKS, ids=[t[0][14:40] for t in PATH_TRICKS])
def test_path_tricks_in_document_ids(admin, reader, path, status, reason):
    before = state(reader)
    for r in (reader.get(path), admin.delete(path)):
        assert r.status_code == status, r.text
        assert reason in r.text, r.text
    assert state(reader) == before


@pytest.mark.parametrize("raw", [b"/v1/documents/../../etc/passwd", b"/v1/documents/docs/./a.md",
                                 b"/v1/documents/docs/../../x"])
def test_literal_dot_segments_sent_as_they_are(docs_server, raw):
    """Clients remove dot segments from URLs; `curl --path-as-is` and raw sockets do not: 400 all the same."""
    with socket.create_connection((docs_server.host, docs_server.port), timeout=30) as sock:
        sock.sendall(b"GET " + raw + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + READ_KEY.encode()
                     + b"\r\nConnection: close\r\n\r\n")
        response = b""
        while chunk := sock.recv(4096):
            response += chunk
    assert response.split(b" ")[1] == b"400", response
    assert b"'.' or '..' part" in response


def test_auth_scopes_and_errors(docs_server, reader):
    with docs_server.client() as anonymous, docs_server.client("wrong-key-0123456789abcdef") as wrong:
        for client in (anonymous, wrong):
            for method, path in [("GET", "/v1/documents"), ("POST", "/v1/ask"), ("POST", "/v1/documents"),
                                 ("GET", "/v1/documents/x"), ("DELETE", "/v1/documents/x")]:
                r = client.request(method, path, json={"question": "q"})
                assert r.status_code == 401, (method, path, r.text)
                assert r.headers["WWW-Authenticate"] == "Bearer"
        # the probes and the page need no key
        assert anonymous.get("/healthz").status_code == anonymous.get("/metrics").status_code == 200
        assert anonymous.get("/").status_code == 200
    assert reader.get("/v1/documents").status_code == 200
    r = reader.post("/v1/documents", json={"documents": [{"text": "x"}]})
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    assert reader.delete("/v1/documents/abc").status_code == 403
    with docs_server.client() as c:  # a malformed Authorization header is just no key
        assert c.get("/v1/documents", headers={"Authorization": "Basic abc"}).status_code == 401
        assert c.get("/v1/documents", headers={"Authorization": f"Bearer  {READ_KEY}x"}).status_code == 401
    log = docs_server.log()
    assert READ_KEY not in log and ADMIN_KEY not in log  # never logged


def test_metrics_in_prometheus_text_format(docs_server, reader):
    reader.get("/v1/documents")
    with docs_server.client() as c:
        r = c.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert re.search(r'^ragless_requests_total\{method="GET",route="/v1/documents",status="200"\} \d', text, re.M)
    assert re.search(r'^ragless_request_seconds_bucket\{le="0.005",method="GET",route="/v1/documents"\}', text, re.M)
    assert re.search(r"^ragless_queue_depth 0", text, re.M) and "ragless_queue_rejected_total" in text
    assert re.search(r"^ragless_index_generation [1-9]", text, re.M)
    assert "/v1/documents/{doc_id}" in text and "no-such-document" not in text  # route templates, not raw paths


def test_commits_of_another_writer_are_seen_without_a_restart(docs_server, reader, encoder, tmp_path):
    generation, total = state(reader)
    paths = write_corpus(tmp_path / "more", 2, start=40)  # `ragless ingest` in another process, in effect
    report = ingest(docs_server.index, paths, encoder)
    assert report.generation > generation
    assert state(reader) == (report.generation, total + 2)
    new_id = next(d for d in IndexReader(docs_server.index).catalog.values() if d.source == str(paths[0])).doc_id
    assert reader.get(f"/v1/documents/{new_id}").json()["source"] == str(paths[0])


def test_the_page_and_its_headers(docs_server):
    with docs_server.client() as c:
        page = c.get("/")
        script = c.get("/static/app.js")
    assert page.status_code == 200 and "<title>ragless" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert script.status_code == 200 and "textContent" in script.text and "innerHTML" not in script.text
    assert script.headers["x-content-type-options"] == "nosniff"


def test_unknown_routes_and_methods(reader):
    assert reader.get("/v1/nothing").status_code == 404
    assert reader.put("/v1/documents/abc", content=b"x").status_code == 405
    assert isinstance(reader.get("/v1/documents", params={"limit": 0}), httpx.Response)
    assert reader.get("/v1/documents", params={"limit": 0}).status_code == 422
    assert reader.get("/v1/documents", params={"offset": -1}).status_code == 422
