"""The viewer's HTTP side (Starlette): a token on every request, files only by case and key.

No route takes a file path: a URL names a case id from :func:`~transmed.viewer.sources.catalogue`
and a modality from a fixed list, and every file behind them was checked to resolve inside the
viewed folder (or ``--images``) when the catalogue was made, and again when it is read. Static
files come from the package's own ``static/`` folder through Starlette's ``StaticFiles`` (which
refuses paths leading out of it). The token arrives once in the printed URL's query, then as an
``HttpOnly``, ``SameSite=Strict`` cookie; requests without it get 403, static files included.
"""

from __future__ import annotations

import html
import logging
import secrets
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from transmed.data.labels import MODALITIES
from transmed.viewer import saving
from transmed.viewer.sources import (
    Catalogue,
    ViewerError,
    correction_paths,
    inside,
    record_path_of,
)
from transmed.viewer.volumes import (
    Encoded,
    LoadedCase,
    image_nifti,
    labels_nifti,
    labels_raw,
    labels_raw_gzip,
    load,
)

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
COOKIE = "transmed_view_token"
#: Cases kept in memory at once: the server's memory stays bounded for any number of cases
#: (a 240 × 240 × 155 case with its labels and four encoded modalities: about 130 MB).
CACHE_CASES = 2
#: Images do not change while the server runs: the browser may reuse them, revalidating by ETag.
IMAGE_CACHE = "private, max-age=3600"
#: The page's placeholder for the case it opens first (filled in by :func:`index_page`).
CASE_META = b'<meta name="transmed-case" content="">'


def index_page(first_case: str | None) -> bytes:
    """``index.html`` naming ``first_case``, so the page starts that case's downloads before
    NiiVue attaches, without waiting for the case list (which would arrive only after).

    Raises:
        ValueError: the page lacks the placeholder (the static files are not this version's).
    """
    page = (STATIC / "index.html").read_bytes()
    if CASE_META not in page:
        raise ValueError(f"{STATIC / 'index.html'}: no {CASE_META.decode()} placeholder")
    if not first_case:
        return page
    named = f'<meta name="transmed-case" content="{html.escape(first_case, quote=True)}">'
    return page.replace(CASE_META, named.encode(), 1)


class TokenMiddleware:
    """403 unless the request carries the token (query ``token``, cookie, or header)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = (
            request.query_params.get("token")
            or request.cookies.get(COOKIE)
            or request.headers.get("x-transmed-token")
            or ""
        )
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            await PlainTextResponse("forbidden: missing or wrong token", 403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Viewer:
    """The catalogue, the cases in memory (LRU of :data:`CACHE_CASES`), one lock per case.

    A case is loaded with its latest saved correction when there is one, under the case's
    lock: a load waits for a save in progress and reads what it wrote.
    """

    def __init__(self, cat: Catalogue, *, send_outbox: Any = None) -> None:
        self.cat = cat
        self.send_outbox = send_outbox  # an OutboxSender for the node's destination, or None
        self._cache: OrderedDict[str, LoadedCase] = OrderedDict()
        self._lock = threading.Lock()
        self._case_locks: dict[str, threading.RLock] = {}

    def case_lock(self, case_id: str) -> threading.RLock:
        """The case's lock (reentrant: a save holding it may load the case)."""
        with self._lock:
            return self._case_locks.setdefault(case_id, threading.RLock())

    def loaded(self, case_id: str) -> LoadedCase:
        try:
            case = self.cat.get(case_id)
        except KeyError:
            raise ViewerError(f"no case {case_id!r}") from None
        if case.problem:
            raise ViewerError(f"case {case_id}: {case.problem}")
        files = [*case.images.values(), case.prediction, case.seg, case.dicom_folder]
        if any(p is not None and not inside(p, self.cat.read_roots) for p in files):
            raise ViewerError(f"case {case_id}: a file resolves outside the viewed folder")
        with self._lock:
            if case_id in self._cache:
                self._cache.move_to_end(case_id)
                return self._cache[case_id]
        with self.case_lock(case_id):  # cached before a save can change the files read
            with self._lock:  # loaded by the request this one waited for
                if case_id in self._cache:
                    return self._cache[case_id]
            corrected = correction_paths(case, self.cat.root)[0]  # read only on a cache miss
            present = corrected.exists() or corrected.is_symlink()
            if present and not inside(corrected, self.cat.read_roots):
                raise ViewerError(f"case {case_id}: its saved correction {corrected.name} "
                                  "resolves outside the viewed folder (symlink?); refused")
            item = load(case, corrected=corrected)
            with self._lock:
                self._cache[case_id] = item
                while len(self._cache) > CACHE_CASES:
                    self._cache.popitem(last=False)
        return item

    def cached(self) -> list[str]:
        with self._lock:
            return list(self._cache)

    def warm(self, case_id: str) -> None:
        """Load ``case_id`` and encode what the page fetches first (labels, the T1ce or first
        modality), so a page opened right after start finds them ready. Errors are left to
        the page's own request to report."""
        try:
            item = self.loaded(case_id)
            mods = modalities(item)
            item.encoded("labels.raw.gz", lambda: labels_raw_gzip(item))
            if mods:
                first = "t1ce" if "t1ce" in mods else mods[0]
                item.encoded(f"image/{first}", lambda: image_nifti(item, first))
        except Exception as exc:  # best effort: the page's own request reports the problem
            log.debug("warming case %s: %s", case_id, exc)


def modalities(item: LoadedCase) -> list[str]:
    """The case's modalities in :data:`MODALITIES` order."""
    have = item.dicom[0].series if item.dicom else item.case.images
    return [m for m in MODALITIES if m in have]


def _error(exc: Exception, status: int = 422) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=status)


def _bytes(
    request: Request, item: Encoded, cache: str, extra: dict[str, str] | None = None
) -> Response:
    """``item`` (or 304 when the browser holds that version), with ``extra`` headers."""
    headers = {"ETag": item.etag, "Cache-Control": cache, **(extra or {})}
    if request.headers.get("if-none-match") == item.etag:
        return Response(status_code=304, headers=headers)
    return Response(item.data, media_type="application/octet-stream", headers=headers)


def accepts_gzip(request: Request) -> bool:
    """Whether the request's Accept-Encoding lists gzip with a non-zero quality."""
    for part in request.headers.get("accept-encoding", "").split(","):
        name, *params = (p.strip() for p in part.split(";"))
        if name.lower() not in ("gzip", "x-gzip"):
            continue
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    return float(value) > 0
                except ValueError:
                    return False
        return True
    return False


def build_app(cat: Catalogue, *, token: str, hosts: list[str] | None = None,
              send_outbox: Any = None, warm: str | None = None) -> Starlette:  # fmt: skip
    """The ASGI app for ``cat``; ``hosts``: accepted Host headers (DNS-rebinding guard);
    ``warm``: a case to prepare in the background from the start, named in the page as the
    one it opens (``?case=`` in the URL still wins)."""
    viewer = Viewer(cat, send_outbox=send_outbox)
    page = index_page(warm)
    if warm is not None:
        threading.Thread(target=viewer.warm, args=(warm,), name="viewer-warm", daemon=True).start()

    async def index(request: Request) -> Response:
        response = HTMLResponse(page, headers={"Cache-Control": "no-store"})
        if request.query_params.get("token"):
            response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
        return response

    def cases(request: Request) -> Response:
        return JSONResponse({
            "root": cat.root.name, "kind": cat.kind, "problems": cat.problems,
            "cases": [{"id": c.case_id, "kind": c.kind, "problem": c.problem,
                       "prediction": (c.prediction or c.seg).name if (c.prediction or c.seg)
                       else None} for c in cat.cases],
        })  # fmt: skip

    def case_info(request: Request) -> Response:
        cid = request.path_params["cid"]
        try:
            item = viewer.loaded(cid)
        except ViewerError as exc:
            return _error(exc)
        case = item.case
        mods = modalities(item)
        ras = item.ras_grid
        counts = item.label_voxels()  # the labels the page opens with: its volume table's start
        return JSONResponse({
            "id": cid, "kind": case.kind, "modalities": mods, "shape": list(ras.shape),
            "spacing_mm": [round(s, 4) for s in ras.spacing], "voxel_ml": item.voxel_ml,
            "volumes_ml": item.volumes_ml(counts=counts), "label_voxels": counts,
            "label_convention": item.convention.name,
            "prediction": (case.prediction or case.seg).name if (case.prediction or case.seg)
            else None,
            "labels": item.labels_from,  # shown: prediction | correction (saved_at) | empty
            "provenance": case.provenance,
            "can_send": case.job_id is not None,
            "saved_to": saving.target_paths(item, cat.root)[0].name,
        })  # fmt: skip

    # Sync handlers: Starlette runs them in its thread pool, so reading and encoding a volume
    # never blocks the event loop (the case list and a second volume are served meanwhile).
    def image(request: Request) -> Response:
        cid, mod = request.path_params["cid"], request.path_params["mod"]
        if mod not in MODALITIES:
            return _error(ValueError(f"unknown modality {mod!r}"), 404)
        try:
            item = viewer.loaded(cid)
            encoded = item.encoded(f"image/{mod}", lambda: image_nifti(item, mod))
        except ViewerError as exc:
            return _error(exc)
        return _bytes(request, encoded, IMAGE_CACHE)

    def labels(request: Request) -> Response:
        try:
            data = labels_nifti(viewer.loaded(request.path_params["cid"]))
        except ViewerError as exc:
            return _error(exc)
        return Response(data, media_type="application/octet-stream")

    def labels_bitmap(request: Request) -> Response:
        """The labels as NiiVue's drawing bitmap (raw bytes, RAS order), revalidated by ETag
        on every request (``no-cache``); gzip-encoded for a browser that accepts it (a label
        map shrinks ~100-fold, and the browser's network process inflates it)."""
        gz = accepts_gzip(request)
        try:
            item = viewer.loaded(request.path_params["cid"])
            if gz:
                encoded = item.encoded("labels.raw.gz", lambda: labels_raw_gzip(item))
            else:
                encoded = item.encoded("labels.raw", lambda: labels_raw(item))
        except ViewerError as exc:
            return _error(exc)
        extra = {"Vary": "Accept-Encoding", **({"Content-Encoding": "gzip"} if gz else {})}
        return _bytes(request, encoded, "no-cache", extra)

    async def save(request: Request) -> Response:
        body = await request.body()
        cid = request.path_params["cid"]
        timing = {}
        for key in ("seconds_open", "seconds_editing"):
            try:
                timing[key] = max(0.0, float(request.query_params.get(key, 0)))
            except ValueError:
                return _error(ValueError(f"{key}: not a number"), 400)
        from starlette.concurrency import run_in_threadpool

        def work() -> dict[str, Any]:
            with viewer.case_lock(cid):  # one save of a case at a time; the last one wins
                item = viewer.loaded(cid)  # as it is now: the labels of the last save
                internal = item.from_ras_bitmap(body)
                return saving.save_correction(item, internal, cat.root, timing=timing)

        try:
            entry = await run_in_threadpool(work)
        except saving.SaveFailed as exc:  # the page shows the message: what is on disk
            log.error("case %s: %s", cid, exc, exc_info=exc.__cause__)
            return _error(exc, 500)
        except ViewerError as exc:
            return _error(exc)
        log.info("case %s: correction saved (%d voxels changed)", cid, entry["voxels_changed"])
        return JSONResponse(entry)

    async def send(request: Request) -> Response:
        cid = request.path_params["cid"]
        from starlette.concurrency import run_in_threadpool

        def work() -> dict[str, Any]:
            item = viewer.loaded(cid)
            case = item.case
            if case.job_id is None:
                raise ViewerError("only studies received by transmed serve can be sent back")
            nifti_path, seg_path = saving.target_paths(item, cat.root)
            record = saving._read_record(record_path_of(nifti_path))
            last = (record.get("saves") or [{}])[-1]
            if not last.get("seg_sop_instance_uid") or seg_path is None:
                raise ViewerError("save the correction first")
            sender = viewer.send_outbox
            with viewer.case_lock(cid):
                queued = saving.queue_in_outbox(
                    cat.root, case.job_id, seg_path, last["seg_sop_instance_uid"],
                    sender.outbox if sender is not None else None,
                )  # fmt: skip
            if sender is not None:
                sender.wake()
            return {"queued": queued.item_id, "sending": viewer.send_outbox is not None}

        try:
            return JSONResponse(await run_in_threadpool(work))
        except ViewerError as exc:
            return _error(exc, 409)

    routes = [
        Route("/", index),
        Route("/api/cases", cases),
        Route("/api/cases/{cid}", case_info),
        Route("/api/cases/{cid}/image/{mod}.nii", image),
        Route("/api/cases/{cid}/labels.nii", labels),
        Route("/api/cases/{cid}/labels.raw", labels_bitmap),
        Route("/api/cases/{cid}/save", save, methods=["POST"]),
        Route("/api/cases/{cid}/send", send, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(TokenMiddleware, token=token)]
    if hosts:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=hosts))
    app = Starlette(routes=routes, middleware=middleware)
    app.state.viewer = viewer
    return app
