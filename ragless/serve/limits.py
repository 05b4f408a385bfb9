"""Limits enforced before anything is parsed: request body size, document ids, upload names.

`BodyLimitMiddleware` refuses a body larger than its route allows with 413 — at once from its Content-Length, or
while it streams in (chunked bodies, or a Content-Length that lies) — before the app reads a byte of it. Document ids
and file names from requests are checked here and only ever used as keys of the catalog or as labels: never as a path
on disk.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

# An id a client may give a new document: one or more names joined by "/" ("docs/a.md": ids derived from paths
# read well), each name starting with a letter, digit or "_" (so no "." or ".." and no hidden-file names), of the
# characters below; no "\\", no control characters, no leading, trailing or doubled "/". At most 256 characters
# (`DOC_ID_MAX_CHARS`, checked beside the pattern). Ids of documents ingested from files by `ragless ingest` are 16
# hex digits, which match.
NEW_DOC_ID = r"^[A-Za-z0-9_][A-Za-z0-9_.:@+=~-]*(/[A-Za-z0-9_][A-Za-z0-9_.:@+=~-]*)*$"
# An id looked up (GET, DELETE /v1/documents/{doc_id}: the rest of the URL path, "/" included): what an index may hold
# (records of JSONL or Parquet files keep their own ids), less what reads as a path trick.
DOC_ID_MAX_CHARS = 256
_BAD_ID_CHARS = re.compile(r"[\\\x00-\x1f\x7f]")
_BAD_NAME_CHARS = re.compile(r"[/\\\x00-\x1f\x7f]")  # of an uploaded file's name: no "/" either
FILENAME_MAX_CHARS = 255


def doc_id_problem(doc_id: str) -> str | None:
    """Why ``doc_id`` cannot name a document in a URL, or None when it can.

    Ids are only ever keys of the catalog, never paths on disk; still, an id that reads as a path trick is refused
    with its reason rather than looked up: a "." or ".." part, a leading "/" (absolute), an empty part ("a//b", a
    trailing "/"), a backslash or a control character (NUL included). The URL's percent-escapes are decoded first
    (``%2e%2e`` is ".."; ``%2F`` is "/"), so an escaped trick is the same trick.

    >>> doc_id_problem("docs/a.md") is None
    True
    >>> doc_id_problem("docs/../etc/passwd")
    "a document id has no '.' or '..' part"
    """
    if not doc_id or len(doc_id) > DOC_ID_MAX_CHARS:
        return f"a document id has 1 to {DOC_ID_MAX_CHARS} characters"
    if _BAD_ID_CHARS.search(doc_id):
        return "a document id holds no backslash or control characters"
    if doc_id.startswith("/"):
        return "a document id does not start with '/' (it is not an absolute path)"
    parts = doc_id.split("/")
    if any(part in (".", "..") for part in parts):
        return "a document id has no '.' or '..' part"
    if "" in parts:
        return "a document id has no empty part (no '//', no trailing '/')"
    return None


def filename_problem(name: str | None) -> str | None:
    """Why an uploaded file's name cannot be used as its label, or None. It names the document (its source is
    ``upload:NAME``) and picks the reader by its suffix; it never becomes a path."""
    if not name:
        return "an uploaded file needs a file name (its suffix picks the reader)"
    if len(name) > FILENAME_MAX_CHARS:
        return f"file name longer than {FILENAME_MAX_CHARS} characters"
    if name in (".", "..") or _BAD_NAME_CHARS.search(name):
        return "a file name holds no '/', '\\\\' or control characters (send the name, not a path)"
    return None


def has_binary(text: str) -> bool:
    """Whether JSON text holds NUL bytes: binary data sent as a string, not text."""
    return "\x00" in text


async def send_error(send, status: int, detail: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A JSON error response ``{"detail": ...}`` straight from ASGI (before the app is reached)."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


class BodyLimitMiddleware:
    """Reads each request body up to ``limit_for(scope)`` bytes, then hands it to the app; 413 past the limit.

    The body is held in memory (it is bounded by the limit), so the app never sees a partial one and nothing is
    written for a request that is refused.
    """

    def __init__(self, app, limit_for: Callable[[dict], int]):
        self.app, self.limit_for = app, limit_for

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope)
        declared = [v for k, v in scope.get("headers", []) if k == b"content-length"]
        if declared:
            try:
                size = int(declared[0])
            except ValueError:
                return await send_error(send, 400, "Content-Length is not a number")
            if size > limit:
                return await send_error(send, 413, f"request body of {size} bytes exceeds the limit of {limit} "
                                                   "bytes for this endpoint", [(b"connection", b"close")])
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                return await send_error(send, 413, f"request body exceeds the limit of {limit} bytes for this "
                                                   "endpoint", [(b"connection", b"close")])
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
