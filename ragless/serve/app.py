"""The HTTP endpoint: FastAPI routes over `service.Service`, the work queue, keys, limits and metrics.

    app = create_app("my-index", ServeConfig(), keys=load_keys("keys.txt"))
    uvicorn.run(app, host="127.0.0.1", port=8000)          # or: ragless serve --index my-index

Routes (the OpenAPI document at ``/openapi.json`` describes each one, its bodies and its errors):

    POST   /v1/ask                    a question -> the Answer record (or Server-Sent Events with "stream": true)
    POST   /v1/documents              add or replace documents: JSON documents, or files as multipart/form-data
    GET    /v1/documents              the live documents (offset, limit, source_prefix)
    GET    /v1/documents/{doc_id}     one document with its text and segments (the id may hold "/": docs/a.md)
    DELETE /v1/documents/{doc_id}     remove it
    GET    /healthz  /readyz  /metrics   liveness, readiness (models loaded), Prometheus metrics
    GET    /                          the page: ask, watch the answer stream, click a citation

(No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at run time, and the request
models are local to `create_app`.)

Errors are ``{"detail": ...}`` with a 4xx status for anything wrong with a request; an internal error is logged
with its traceback and answered 500 with a generic message (the fuzz test asserts none happens).
"""

import asyncio
import ipaddress
import json
import logging
import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import UploadFile

from ragless.serve import schemas as S
from ragless.serve.auth import KeyRing, allows
from ragless.serve.config import LOOPBACK, ServeConfig
from ragless.serve.limits import DOC_ID_MAX_CHARS, BodyLimitMiddleware, doc_id_problem, filename_problem
from ragless.serve.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from ragless.serve.queue import QueueFull, WorkQueue
from ragless.serve.service import BadDocuments, Filters, Service, documents_from_json, documents_from_uploads
from ragless.store import StoreError

log = logging.getLogger("ragless.serve")
STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {  # the page runs its own script and style only, and talks to this server only
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_REASONS = {400: "bad request", 401: "no valid API key", 403: "the key's scope does not allow this",
            404: "no such document", 413: "body too large", 415: "unsupported content or file type",
            422: "invalid body or parameters", 429: "the model queue is full: retry after Retry-After seconds",
            503: "not ready, or the index is busy or unavailable: retry after Retry-After seconds",
            504: "not answered within the request timeout"}


class _Static(StaticFiles):
    """The page's script and style, with the page's security headers."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": S.Error, "description": _REASONS[code]} for code in codes}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def create_app(index: str | Path, config: ServeConfig | None = None, keys: KeyRing | None = None,
               service: Service | None = None) -> FastAPI:
    """The app serving ``index``; ``keys`` None means open access (the caller binds it to loopback only)."""
    cfg = config or ServeConfig()
    service = service or Service(index, cfg)
    work = WorkQueue(cfg.queue_size)
    metrics = Metrics(lambda: work.depth, lambda: work.running, service.state)
    AskIn, DocumentsIn = S.request_models(cfg)
    retry = {"Retry-After": str(cfg.retry_after_s)}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if cfg.preload:
            work.submit(_timed, "load", service.load)  # first in the queue: questions wait for it; it logs failures
        yield
        work.shutdown()

    app = FastAPI(title="ragless", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Document question answering with verbatim citations, over a ragless index. "
                              + ("Bearer API keys: scope `read` asks and reads documents, `admin` also changes "
                                 "them." if keys is not None else "Open access (no API keys configured)."))

    def _timed(job: str, fn, *args, **kwargs):
        with metrics.model.labels(job).time():
            return fn(*args, **kwargs)

    # -- auth

    if keys is None:
        def require(scope: str):
            async def open_access() -> None:
                return None
            return open_access
    else:
        bearer = HTTPBearer(auto_error=False, description="an API key: `Authorization: Bearer KEY`")

        def require(scope: str):
            async def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]) -> None:
                token = credentials.credentials if credentials is not None else None
                found = keys.scope_of(token)
                if found is None:
                    raise HTTPException(401, "missing or unknown API key (Authorization: Bearer KEY)",
                                        headers={"WWW-Authenticate": "Bearer"})
                if not allows(found, scope):
                    raise HTTPException(403, f"this key's scope ({found}) does not allow this; it needs {scope}")
            return check

    # -- errors

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # the location, message and type of each error, never the input (it can be large or binary)
        detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        log.warning("index unavailable: %s", exc)
        return JSONResponse({"detail": f"index unavailable: {exc}"}, status_code=503, headers=retry)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error (logged on the server)"}, status_code=500)

    async def run_job(job: str, fn, *args, **kwargs):
        """Run ``fn`` on the model worker and wait for it, within the request timeout."""
        if service.load_error is not None:
            raise HTTPException(503, f"the models failed to load: {service.load_error}", headers=retry)
        try:
            future = work.submit(_timed, job, fn, *args, **kwargs)
        except QueueFull as e:
            metrics.rejected.inc()
            raise HTTPException(429, f"busy: {e}", headers=retry) from None
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), cfg.request_timeout_s)
        except asyncio.TimeoutError:
            future.cancel()  # dropped if still waiting; a running job finishes and its result is discarded
            raise HTTPException(504, f"not done within {cfg.request_timeout_s:g} s") from None

    # -- asking

    def _filters(body) -> Filters | None:
        f = body.filters
        if f is None:
            return None
        return Filters(doc_ids=frozenset(f.doc_ids) if f.doc_ids is not None else None,
                       source_prefix=f.source_prefix, title=f.title, meta=f.meta)

    def _record(question: str, answer, generation: int) -> dict[str, Any]:
        return {"question": question, **answer.to_dict(), "generation": generation}

    def _event(name: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"properties": {"event": {"const": name}, "data": {
            "type": "string", "contentMediaType": "application/json", "contentSchema": data}}}

    # each Server-Sent Event (OpenAPI 3.1: the schema of a text/event-stream describes one event)
    stream_doc = {"text/event-stream": {"schema": {
        "type": "object", "required": ["event", "data"],
        "description": "with \"stream\": true: `token` events (a piece of the completion as the model decides it), "
                       "then one `answer` event (the Answer record, as the JSON response) or one `error` event",
        "oneOf": [
            _event("token", {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}),
            _event("answer", {"$ref": "#/components/schemas/AnswerOut"}),
            _event("error", {"type": "object", "required": ["status", "detail"],
                             "properties": {"status": {"type": "integer"}, "detail": {"type": "string"}}}),
        ]}}}

    @app.post("/v1/ask", response_model=S.AnswerOut, tags=["ask"],
              responses={200: {"content": stream_doc}, **_errors(400, 401, 403, 413, 422, 429, 503, 504)},
              summary="Answer a question with citations")
    async def ask(body: AskIn, _: None = Depends(require("read"))):
        tokens = await run_in_threadpool(service.question_tokens, body.question)
        if tokens > cfg.max_question_tokens:
            raise HTTPException(422, f"the question is {tokens} tokens long (SmolLM2's tokenizer); the limit is "
                                     f"{cfg.max_question_tokens}")
        filters = _filters(body)
        if not body.stream:
            answer, generation = await run_job("ask", service.ask, body.question, body.k, filters)
            return _record(body.question, answer, generation)
        if service.load_error is not None:
            raise HTTPException(503, f"the models failed to load: {service.load_error}", headers=retry)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str] = asyncio.Queue()

        def on_text(piece: str) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        try:
            future = work.submit(_timed, "ask", service.ask, body.question, body.k, filters, on_text)
        except QueueFull as e:
            metrics.rejected.inc()
            raise HTTPException(429, f"busy: {e}", headers=retry) from None
        return StreamingResponse(_events(body.question, future, pieces), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def _events(question: str, future, pieces: asyncio.Queue):
        loop = asyncio.get_running_loop()
        done = asyncio.wrap_future(future)
        deadline = loop.time() + cfg.request_timeout_s
        try:
            while True:
                getter = asyncio.ensure_future(pieces.get())
                finished, _ = await asyncio.wait({getter, done}, timeout=max(0.0, deadline - loop.time()),
                                                 return_when=asyncio.FIRST_COMPLETED)
                if getter in finished:
                    yield _sse("token", {"text": getter.result()})
                    continue
                getter.cancel()
                if done not in finished:
                    future.cancel()
                    yield _sse("error", {"status": 504, "detail": f"not done within {cfg.request_timeout_s:g} s"})
                    return
                while not pieces.empty():  # told before the job ended: in order, ahead of its result
                    yield _sse("token", {"text": pieces.get_nowait()})
                if done.cancelled():
                    yield _sse("error", {"status": 503, "detail": "the job was cancelled"})
                elif done.exception() is not None:
                    exc = done.exception()
                    if isinstance(exc, StoreError):
                        yield _sse("error", {"status": 503, "detail": f"index unavailable: {exc}"})
                    else:
                        log.error("internal error while streaming an answer", exc_info=exc)
                        yield _sse("error", {"status": 500, "detail": "internal error (logged on the server)"})
                else:
                    answer, generation = done.result()
                    yield _sse("answer", S.AnswerOut(**_record(question, answer, generation)).model_dump())
                return
        finally:
            if not done.done():
                future.cancel()  # the client went away: a job still waiting never runs

    # -- documents

    upload_schema = {
        "required": True,
        "content": {
            "application/json": {"schema": DocumentsIn.model_json_schema(ref_template="#/components/schemas/{model}")},
            "multipart/form-data": {"schema": {
                "type": "object", "required": ["files"], "additionalProperties": False,
                "properties": {"files": {"type": "array", "minItems": 1, "maxItems": cfg.max_documents, "description": (
                    f"files ({' '.join(sorted({'.txt', '.md', '.markdown', '.html', '.htm', '.pdf'}))}): each one "
                    "document with source upload:NAME (the same name again replaces it)"),
                    "items": {"type": "string", "format": "binary"}}}}},
        },
    }

    @app.post("/v1/documents", response_model=S.IngestOut, tags=["documents"],
              openapi_extra={"requestBody": upload_schema},
              responses=_errors(400, 401, 403, 413, 415, 422, 429, 503, 504),
              summary="Add or replace documents (JSON documents, or files as multipart/form-data)")
    async def add_documents(request: Request, _: None = Depends(require("admin"))):
        mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if mime == "application/json":
            raw = await request.body()
            try:
                parsed = DocumentsIn.model_validate_json(raw)
            except ValidationError as e:
                raise RequestValidationError(e.errors(include_input=False)) from None
            make, given = documents_from_json, [d.model_dump() for d in parsed.documents]
        elif mime == "multipart/form-data":
            # closed on the way out, refused or not: its parts' spooled temporary files go at once
            async with request.form(max_files=cfg.max_documents, max_fields=cfg.max_documents) as form:
                unknown = sorted(set(form.keys()) - {"files"})
                if unknown:
                    raise HTTPException(422, f"unknown form fields {unknown}: send the files as 'files'")
                given = []
                for item in form.getlist("files"):
                    if not isinstance(item, UploadFile):
                        raise HTTPException(422, "'files' must be files (multipart parts with a filename)")
                    problem = filename_problem(item.filename)
                    if problem:
                        raise HTTPException(400, problem)
                    given.append((item.filename, await item.read()))
            if not given:
                raise HTTPException(422, "no files: send one or more parts named 'files'")
            make = documents_from_uploads
        else:
            raise HTTPException(415, "send application/json documents or multipart/form-data files")
        try:
            docs = await run_in_threadpool(make, given, cfg.max_upload_bytes)
        except BadDocuments as e:
            raise HTTPException(e.status, e.reasons) from None
        return await run_job("ingest", service.ingest, docs)

    @app.get("/v1/documents", response_model=S.DocumentList, tags=["documents"],
             responses=_errors(401, 403, 503), summary="List the live documents, by source")
    def list_documents(offset: int = Query(0, ge=0, le=10**9), limit: int = Query(100, ge=1, le=1000),
                       source_prefix: str | None = Query(None, max_length=1000,
                                                         description="only documents whose source starts with this"),
                       _: None = Depends(require("read"))):
        return service.list_documents(offset, limit, source_prefix)

    doc_id_param = PathParam(description=(
        "a document id: the rest of the path, '/' included (`docs/a.md`; `docs%2Fa.md` is the same id); refused "
        "with 400: a '.' or '..' part, a leading '/', an empty part ('a//b', a trailing '/'), a backslash or a "
        "control character (percent-escaped ones too)"), min_length=1, max_length=DOC_ID_MAX_CHARS)

    def _checked(doc_id: str) -> str:
        problem = doc_id_problem(doc_id)
        if problem:
            raise HTTPException(400, problem)
        return doc_id

    @app.get("/v1/documents/{doc_id:path}", response_model=S.DocumentOut, tags=["documents"],
             responses=_errors(400, 401, 403, 404, 503), summary="One document, with its text and segments")
    def get_document(doc_id: str = doc_id_param, _: None = Depends(require("read"))):
        found = service.get_document(_checked(doc_id))
        if found is None:
            raise HTTPException(404, f"no document {doc_id!r}")
        return found

    @app.delete("/v1/documents/{doc_id:path}", response_model=S.Deleted, tags=["documents"],
                responses=_errors(400, 401, 403, 404, 429, 503, 504), summary="Remove a document")
    async def delete_document(doc_id: str = doc_id_param, _: None = Depends(require("admin"))):
        generation = await run_job("delete", service.delete, _checked(doc_id))
        if generation is None:
            raise HTTPException(404, f"no document {doc_id!r}")
        return {"doc_id": doc_id, "generation": generation}

    # -- operations

    @app.get("/healthz", response_model=S.Health, response_model_exclude_none=True, tags=["operations"],
             summary="Liveness: the process answers")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", response_model=S.Health, response_model_exclude_none=True, tags=["operations"],
             responses={503: {"model": S.Health}},
             summary="Readiness: the index is open and the models are loaded")
    def readyz():
        try:
            reader = service.reader()
        except (StoreError, OSError, ValueError) as e:
            return JSONResponse({"status": "unavailable", "detail": f"index: {e}"}, 503, headers=retry)
        if service.load_error is not None:
            return JSONResponse({"status": "failed", "detail": service.load_error}, 503)
        if not service.loaded:
            return JSONResponse({"status": "loading"}, 503, headers=retry)
        return {"status": "ready", "generation": reader.generation if reader else 0,
                "documents": len(reader.catalog) if reader else 0}

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics (text format)",
             responses={200: {"content": {CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}}}},
             response_class=Response)
    def metrics_text():
        try:
            service.reader()  # the generation gauges show what the next question sees
        except (StoreError, OSError, ValueError):
            pass
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    # -- the page

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon():
        return Response(status_code=204)

    app.mount("/static", _Static(directory=STATIC), name="static")

    def limit_for(scope: dict) -> int:
        upload = scope.get("method") == "POST" and scope.get("path") == "/v1/documents"
        return cfg.max_upload_bytes if upload else cfg.max_body_bytes

    app.add_middleware(BodyLimitMiddleware, limit_for=limit_for)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: counts the 413s too
    app.state.service, app.state.work, app.state.metrics = service, work, metrics
    return app


def serve(index: str | Path, config: ServeConfig, keys: KeyRing | None) -> None:
    """Run the server until interrupted (`ragless serve`). Without keys it binds to loopback only, and says so."""
    import uvicorn

    host = config.host
    if keys is None:
        if not is_loopback(host):
            print(f"ragless serve: no API keys configured: binding to {LOOPBACK}, not {host} (give --api-keys FILE "
                  "or RAGLESS_API_KEYS to serve other hosts)", file=sys.stderr, flush=True)
            host = LOOPBACK
        else:
            print(f"ragless serve: no API keys configured: open access, on loopback only ({host})", file=sys.stderr,
                  flush=True)
    else:
        print(f"ragless serve: {len(keys)} API keys configured", file=sys.stderr, flush=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(index, config, keys)
    uvicorn.run(app, host=host, port=config.port, log_level="info", timeout_graceful_shutdown=5)
