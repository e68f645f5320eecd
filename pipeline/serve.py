"""`featurize serve OUT`: a search page and a JSON API over a store (Starlette, served by uvicorn).

    GET  /                              the search page (a key, a sentence or an image); /?key=KEY and
                                        /?text=TEXT open on that query
    GET  /api/search?key=KEY&k=K        the k nearest neighbours of a row of the store
    GET  /api/search?text=TEXT&k=K      the k nearest neighbours of a sentence, embedded by the store's text
                                        tower (CLIP and SigLIP stores; others answer 400 in one sentence)
    POST /api/search?k=K                the k nearest neighbours of the image in the body, embedded
                                        with the store's exact fingerprint (as `featurize search` does)
    GET  /api/thumbnail?key=KEY         a JPEG thumbnail of a row's image, read from its uri through
                                        Beam's filesystems (tar members included)

Both searches answer {"results": [{"rank", "key", "uri", "score", "tail"}, ...], "tail_rows": N}: N rows of
units the index does not cover yet (a --resume added them) were searched exactly, and `tail` marks the
results among them. A bad request gets a
4xx and {"error": "one sentence"}; an unexpected failure a 500 with the same shape (its
traceback goes to the server's log, never to the client).
"""
from __future__ import annotations

import io
import logging
import threading
from importlib import resources
from typing import Any

import numpy as np

MAX_K = 1000
MAX_UPLOAD_BYTES = 32 << 20
THUMBNAIL_PIXELS = 192
PAGE = "serve_page/index.html"

log = logging.getLogger("featurize.serve")


class BadRequest(Exception):
    """A request the API refuses: its HTTP status and one sentence."""

    def __init__(self, status: int, sentence: str):
        super().__init__(sentence)
        self.status = status
        self.sentence = sentence


def _k(params: Any) -> int:
    text = params.get("k", "10")
    if not text.isdigit() or not 1 <= int(text) <= MAX_K:
        raise BadRequest(400, f"k {text!r} is not a whole number from 1 to {MAX_K}")
    return int(text)


def _jpeg_thumbnail(data: bytes) -> bytes:
    from pipeline.contact_sheet import thumbnail

    buffer = io.BytesIO()
    thumbnail(data, THUMBNAIL_PIXELS).save(buffer, "JPEG", quality=85)
    return buffer.getvalue()


class SearchService:
    """What the routes call: one store, one output, one metric. Embedding and faiss calls are
    serialized (one Keras model, one index), reads of thumbnails are not."""

    def __init__(self, store, output: str, metric: str = "cosine"):
        self.store = store
        self.output = output
        self.metric = metric
        self.rows = store.rows.num_rows  # keys and uris read (or mapped) before the first request
        self._lock = threading.Lock()

    def _results(self, vector: np.ndarray, k: int) -> dict[str, Any]:
        from pipeline.store.index import StaleIndex

        try:
            with self._lock:
                result = self.store.search(vector, k=k, metric=self.metric, output=self.output)
        except StaleIndex as exc:
            raise BadRequest(409, str(exc)) from None
        tail = result.from_tail[0] if result.from_tail is not None else np.zeros(len(result.keys[0]), bool)
        return {"results": [{"rank": rank, "key": key, "uri": self.store.uri_of(index), "score": float(score),
                             "tail": bool(exact)}
                            for rank, (index, score, key, exact) in enumerate(
                                zip(result.indices[0], result.scores[0], result.keys[0], tail), 1)],
                "tail_rows": result.tail_rows}

    def _row(self, key: str | None) -> int:
        if not key:
            raise BadRequest(400, "key is missing; give ?key= one of the store's keys")
        try:
            return self.store.index_of(key)
        except KeyError:
            raise BadRequest(404, f"key {key!r} is not in the store") from None

    def by_key(self, key: str | None, k: int) -> dict[str, Any]:
        self._row(key)
        return self._results(self.store.get(key, self.output), k)

    def by_text(self, text: str, k: int) -> dict[str, Any]:
        refusal = self.store.text_search_refusal(self.output)
        if refusal:
            raise BadRequest(400, refusal)
        if not text.strip():
            raise BadRequest(400, "text is empty; give ?text= a sentence such as 'a red bicycle'")
        with self._lock:
            vector = self.store.embed_text([text])[0]
        return self._results(vector, k)

    def by_image(self, data: bytes, k: int) -> dict[str, Any]:
        from pipeline.images import DECODE_ERRORS

        if not data:
            raise BadRequest(400, "the request body is empty; POST an image's bytes")
        if len(data) > MAX_UPLOAD_BYTES:
            raise BadRequest(413, f"the image is {len(data):,} bytes; at most {MAX_UPLOAD_BYTES:,} are accepted")
        try:
            with self._lock:
                vector = self.store.embed([data], self.output)[0]
        except DECODE_ERRORS as exc:
            raise BadRequest(422, f"the request body is not an image featurize can decode "
                                  f"({type(exc).__name__}: {exc})") from None
        return self._results(vector, k)

    def thumbnail(self, key: str | None) -> bytes:
        from pipeline.images import DECODE_ERRORS
        from pipeline.inputs.reading import read_uri

        uri = self.store.uri_of(self._row(key))
        try:
            data = read_uri(uri)
        except FileNotFoundError:
            raise BadRequest(404, f"the image of {key!r} is no longer at {uri!r}") from None
        try:
            return _jpeg_thumbnail(data)
        except DECODE_ERRORS as exc:
            raise BadRequest(422, f"the image of {key!r} at {uri!r} cannot be decoded ({type(exc).__name__})") from None


def create_app(service: SearchService):
    """The Starlette application over `service`."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    page = resources.files("pipeline").joinpath(PAGE).read_text(encoding="utf-8")

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def search(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        k = _k(request.query_params)
        if request.method == "POST":
            body = await request.body()
            return JSONResponse(await run_in_threadpool(service.by_image, body, k))
        if "text" in request.query_params:
            return JSONResponse(await run_in_threadpool(service.by_text, request.query_params["text"], k))
        return JSONResponse(await run_in_threadpool(service.by_key, request.query_params.get("key"), k))

    async def thumbnail(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        data = await run_in_threadpool(service.thumbnail, request.query_params.get("key"))
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def refused(request: Request, exc: BadRequest) -> Response:
        return JSONResponse({"error": exc.sentence}, status_code=exc.status)

    async def http_error(request: Request, exc) -> Response:  # 404 routes, 405 methods
        return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}"}, status_code=exc.status_code)

    async def failed(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"the server failed on this request ({type(exc).__name__}); its log has "
                                      f"the details"}, status_code=500)

    from starlette.exceptions import HTTPException

    return Starlette(routes=[Route("/", index), Route("/api/search", search, methods=["GET", "POST"]),
                             Route("/api/thumbnail", thumbnail)],
                     exception_handlers={BadRequest: refused, HTTPException: http_error, Exception: failed})


def serve(store, output: str, *, host: str = "127.0.0.1", port: int = 8000, metric: str = "cosine") -> None:
    """Run the app until interrupted."""
    import uvicorn

    service = SearchService(store, output, metric)
    print(f"featurize: serving {store.root} ({service.rows:,} rows, output {output!r}) on http://{host}:{port}/",
          flush=True)
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
