"""The HTTP face for browsers (docs/browser.md): a work's bundle by a signed link, its progress as
server-sent events, its file; the downloader script and a demo page.

It calls the same domain as the gRPC handlers (no proxy to the gRPC port), and answers errors with
the same code names, ErrorInfo reasons and messages, as JSON with the matching HTTP status.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from typing import Any

from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from core import logs
from core.config import Settings, split_list
from core.domain import Domain
from core.errors import InvalidArgument
from core.ids import check_caller_id, require_uuid
from core.records import Bundle, BundleKind, BundleStatus
from server import convert
from server.auth import Scope, Security
from server.links import LinkKeys
from server.status import to_status

log = logging.getLogger("derivatives.http")

# HTTP status of each gRPC code (google.rpc's mapping).
HTTP_STATUS = {
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.FAILED_PRECONDITION: 409,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.NOT_FOUND: 404,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.INTERNAL: 500,
}
WAIT_REFRESH_SECONDS = 2


def _static(name: str) -> str | None:
    try:
        return resources.files("server").joinpath("static", name).read_text()
    except (FileNotFoundError, OSError):
        return None


def error_response(exc: BaseException) -> JSONResponse:
    status = to_status(exc)
    body: dict[str, Any] = {"code": code_pb2.Code.Name(status.code), "message": status.message}
    body["status"] = HTTP_STATUS.get(status.code, 500)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            body["reason"] = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            body["violations"] = [{"field": v.field, "description": v.description} for v in bad.field_violations]
    return JSONResponse({"error": body}, status_code=body["status"])


Endpoint = Callable[[Request], Awaitable[Response]]


def _answer_errors(endpoint: Endpoint) -> Endpoint:
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except Exception as exc:
            return error_response(exc)

    return wrapped


class HttpApp:
    """The endpoints, over one domain; `app` is the ASGI application."""

    def __init__(self, domain: Domain, security: Security, links: LinkKeys, loopback: bool) -> None:
        self.d = domain
        self.security = security
        self.links = links
        self.loopback = loopback
        settings = domain.settings
        routes = [
            Route("/v1/works/{work_id}/bundles/{kind}", _answer_errors(self.start), methods=["POST"]),
            Route("/v1/works/{work_id}/bundles/{kind}", self.wait_page, methods=["GET"]),
            Route("/v1/bundles/{bundle_id}", _answer_errors(self.bundle), methods=["GET"]),
            Route("/v1/bundles/{bundle_id}/events", _answer_errors(self.events), methods=["GET"]),
            Route("/v1/bundles/{bundle_id}/file", _answer_errors(self.file), methods=["GET"]),
            Route("/downloader.js", self.script, methods=["GET"]),
            Route("/downloader.css", self.stylesheet, methods=["GET"]),
            Route("/", self.demo, methods=["GET"]),
        ]
        origins = split_list(settings.http_cors_origins)
        middleware = [
            Middleware(
                CORSMiddleware,
                allow_origins=origins,
                allow_methods=["GET", "POST"],
                allow_headers=["authorization", "last-event-id"],
            )
        ]
        self.app = Starlette(routes=routes, middleware=middleware)

    # --- who may start a bundle ------------------------------------------------------------------

    def _admit(self, request: Request, work_id: str, kind: str) -> str:
        """The caller's name: a signed link's visitor, or a bearer token's principal with the read scope."""
        header = request.headers.get("authorization")
        credentials = self.security.credentials
        if header is not None and credentials is not None:
            principal = credentials.from_header(header)
            credentials.require(principal, Scope.READ)
            return principal.name
        q = request.query_params
        self.links.verify(work_id, kind, q.get("expires", ""), q.get("kid", ""), q.get("sig", ""))
        return f"link:{q.get('kid', '')}"

    async def _find_or_create(self, request: Request) -> Bundle:
        work_id, kind_name = request.path_params["work_id"], request.path_params["kind"]
        violations: list[tuple[str, str]] = []
        check_caller_id(work_id, "work_id", violations)
        if kind_name not in ("pdf", "zip"):
            violations.append(("kind", "must be pdf or zip"))
        if violations:
            raise InvalidArgument(violations)
        name = self._admit(request, work_id, kind_name)
        logs.principal.set(name)
        return await self.d.bundles.find_or_create(work_id, BundleKind(kind_name), name)

    def _json(self, bundle: Bundle) -> dict[str, Any]:
        message = convert.bundle(bundle, self.d.urls)
        return json_format.MessageToDict(message)

    # --- endpoints -------------------------------------------------------------------------------

    async def start(self, request: Request) -> Response:
        return JSONResponse(self._json(await self._find_or_create(request)))

    async def bundle(self, request: Request) -> Response:
        bundle_id = require_uuid(request.path_params["bundle_id"], "bundle_id")
        return JSONResponse(self._json(await self.d.bundles.get(bundle_id)))

    async def events(self, request: Request) -> Response:
        bundle_id = require_uuid(request.path_params["bundle_id"], "bundle_id")
        job_id = await self.d.bundles.job_of(bundle_id)
        after_seq = 0
        last = request.headers.get("last-event-id", "")
        last_job, _, last_seq = last.partition(":")
        if last_job == str(job_id) and last_seq.isdigit():
            after_seq = int(last_seq)  # the same build: resume; a rebuilt bundle's new job starts from a snapshot
        job = await self.d.hub.job(job_id)
        after_seq = min(after_seq, job.seq)
        return StreamingResponse(
            self._stream(bundle_id, job_id, after_seq),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def _stream(self, bundle_id: uuid.UUID, job_id: uuid.UUID, after_seq: int) -> AsyncIterator[str]:
        yield f"retry: {WAIT_REFRESH_SECONDS * 1000}\n\n"
        try:
            async with contextlib.aclosing(self.d.hub.watch(job_id, after_seq)) as updates:  # closed at once
                async for update in updates:
                    event = convert.progress_event(update)
                    if update.final:
                        event.bundle.CopyFrom(convert.bundle(await self.d.bundles.get(bundle_id), self.d.urls))
                    data = json.dumps(json_format.MessageToDict(event), separators=(",", ":"))
                    yield f"id: {job_id}:{event.seq}\ndata: {data}\n\n"
        except Exception as exc:  # the stream is open: say why in an event, then end it
            body = json.loads(bytes(error_response(exc).body))
            yield f"event: error\ndata: {json.dumps(body, separators=(',', ':'))}\n\n"

    async def file(self, request: Request) -> Response:
        bundle_id = require_uuid(request.path_params["bundle_id"], "bundle_id")
        bundle, _size = await self.d.bundles.open_for_read(bundle_id, 0)  # records the access
        location = bundle.location
        path = self.d.storage.local_path(location.bucket, location.key)
        if path is None:  # S3: the browser fetches from storage directly
            signed = self.d.urls.sign(location, bundle.filename)
            return RedirectResponse(signed.url, status_code=302)
        return FileResponse(
            path,
            media_type=bundle.kind.content_type,
            filename=bundle.filename,
            content_disposition_type="attachment",
        )

    async def wait_page(self, request: Request) -> Response:
        """Without JavaScript: start the bundle, refresh until it is built, then go to the file."""
        try:
            bundle = await self._find_or_create(request)
        except Exception as exc:  # the page's links then point back at the link: "Check now" tries again
            body = json.loads(bytes(error_response(exc).body))["error"]
            here = str(request.url)
            return self._page("Download failed", body["message"], "", "", status=body["status"], retry=here)
        file_url = f"/v1/bundles/{bundle.bundle_id}/file"
        if bundle.status is BundleStatus.SUCCESS:
            return RedirectResponse(file_url, status_code=303)
        if bundle.status is BundleStatus.ERROR:
            reason = bundle.error or "the bundle could not be made"
            return self._page("Download failed", reason, "", "", retry=str(request.url))
        message = f"Preparing {bundle.done} of {bundle.total} pages" if bundle.total else "Preparing the download"
        return self._page(bundle.filename or "Preparing", message, str(request.url), file_url)

    def _page(
        self, title: str, message: str, refresh_url: str, file_url: str, status: int = 200, retry: str = ""
    ) -> Response:
        """The no-JavaScript page: reloads `refresh_url` while preparing; a failure links `retry` instead."""
        template = _static("wait.html") or (
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>{refresh}</head>"
            "<body><h1>{title}</h1><p>{message}</p></body></html>"
        )
        refresh = (
            f'<meta http-equiv="refresh" content="{WAIT_REFRESH_SECONDS};url={html.escape(refresh_url)}">'
            if refresh_url
            else ""
        )
        fields = {
            "title": html.escape(title),
            "message": html.escape(message),
            "refresh_url": html.escape(refresh_url or retry),
            "file_url": html.escape(file_url or retry),
            "refresh": refresh,
        }
        text = template
        for name, value in fields.items():  # not str.format: a template's CSS or text may hold braces
            text = text.replace("{" + name + "}", value)
        return HTMLResponse(text, status_code=status, headers={"cache-control": "no-store"})

    async def script(self, request: Request) -> Response:
        text = _static("downloader.js") or "// downloader.js is missing from this installation\n"
        headers = {"access-control-allow-origin": "*", "cache-control": "public, max-age=300"}
        return Response(text, media_type="text/javascript", headers=headers)

    async def stylesheet(self, request: Request) -> Response:
        text = _static("downloader.css") or ""
        headers = {"access-control-allow-origin": "*", "cache-control": "public, max-age=300"}
        return Response(text, media_type="text/css", headers=headers)

    async def demo(self, request: Request) -> Response:
        """The works in the service with their download links: only on a loopback listener."""
        if not self.loopback:
            return Response(status_code=404)
        base = str(request.base_url).rstrip("/")
        items = []
        for work_id, title in await self.d.works.recent(200):
            pdf, zip_ = (self.links.sign(base, work_id, kind) for kind in ("pdf", "zip"))
            items.append(
                f'<li><span class="title">{html.escape(title)}</span> '
                f'<a data-derivatives-download href="{html.escape(pdf)}">PDF</a> '
                f'<a data-derivatives-download href="{html.escape(zip_)}">ZIP</a></li>'
            )
        works = "\n".join(items) or "<li>No works yet: add some with PutWork.</li>"
        template = _static("demo.html") or (
            "<!doctype html><html lang=en><head><meta charset=utf-8><title>Derivative service</title>"
            '<script type="module" src="/downloader.js"></script></head><body><ul>{works}</ul></body></html>'
        )
        return HTMLResponse(template.replace("{works}", works))


def make_app(domain: Domain, security: Security, settings: Settings, loopback: bool) -> HttpApp:
    return HttpApp(domain, security, LinkKeys.from_settings(settings), loopback)
