"""The web page's routes, under ``/ui``: login, the dashboard, job pages, their live updates, media and actions.

Every route but the login form (and the stylesheet it needs) takes the session cookie (``sessions.py``), on
loopback too, exactly as every API route but ``/v1/health`` takes the bearer token. Without a valid session, a
page answers a redirect to the login form and everything else ``401``; actions also check the CSRF token and the
origin (``403``). The routes read and change jobs only through ``backend.worker.jobs`` and the store, as the API
does.

No ``from __future__ import annotations`` here: FastAPI must see the dependency annotations made inside
``mount_web`` as objects, not as names it would look up in this module's globals.
"""

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from ..errors import ApiError
from ..jobs import cancel_job, change_events, delete_job, find_job, result_file, status_reader
from ..logs import get_logger
from ..security import TokenGuard
from ..store import JobStore
from ..thumbnails import thumbnail_file
from . import views
from .sessions import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE, Session, SessionSigner, same_origin

log = get_logger("scail.worker.web")

PACKAGE = Path(__file__).resolve().parent
STATIC = PACKAGE / "static"
PREFIX = "/ui"
# The login form is the one page shown before signing in; these are all it loads.
PUBLIC_STATIC = frozenset({"style.css", "favicon.svg"})
STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                ".svg": "image/svg+xml"}
FAILED_LOGIN_DELAY_S = 1.0
SECURITY_HEADERS = {
    # No inline script or style anywhere: the page's script and stylesheet are files of this package.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "media-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class LoginRequired(Exception):
    """A page was asked for without a valid session: answered with a redirect to the login form."""

    def __init__(self, next_path: str):
        super().__init__(next_path)
        self.next_path = next_path


class PageError(Exception):
    """An error shown as an HTML page (a job page for a deleted job, a refused action)."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


def _secured(response: Response, cache: str = "no-store") -> Response:
    response.headers.update(SECURITY_HEADERS)
    response.headers.setdefault("Cache-Control", cache)
    return response


def safe_next(path: str | None) -> str:
    """Where to go after logging in: a path of this page only (never another site: no open redirect)."""
    if path and path.startswith(PREFIX + "/") and not path.startswith("//") and "\\" not in path \
            and all(ch.isprintable() and ch != " " for ch in path):
        return path
    return PREFIX + "/"


def mount_web(app: FastAPI, *, store: JobStore, runner: Any, guard: TokenGuard,
              health: Callable[[], BaseModel]) -> None:
    """Add the web page to the worker's app. ``health`` builds the authenticated ``/v1/health`` body (with a
    cluster gateway it carries ``nodes``, which the health panel lists)."""
    signer = SessionSigner(guard)
    templates = Jinja2Templates(directory=str(PACKAGE / "templates"))
    templates.env.filters.update(views.FILTERS)
    static_files = {path.name for path in STATIC.iterdir() if path.suffix in STATIC_TYPES}
    router = APIRouter(prefix=PREFIX, include_in_schema=False)

    def render(request: Request, name: str, context: dict[str, Any], status: int = 200,
               session: Session | None = None) -> Response:
        context = {"session": session, "csrf_field": CSRF_FIELD, **context}
        return _secured(templates.TemplateResponse(request, name, context, status_code=status))

    # -- who may ask --

    def current_session(request: Request) -> Session | None:
        return signer.verify(request.cookies.get(SESSION_COOKIE))

    def page_session(request: Request) -> Session:
        session = current_session(request)
        if session is None:
            raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
        return session

    def data_session(request: Request) -> Session:
        session = current_session(request)
        if session is None:
            raise ApiError(401, "unauthorized", "log in to the web page first (its session cookie is missing, "
                           "expired or not valid for this worker's token)", "Cookie")
        return session

    async def action_session(request: Request) -> Session:
        session = current_session(request)
        if session is None:
            raise LoginRequired(PREFIX + "/")
        if not same_origin(request):
            log.warning("cross-origin web action refused", extra={"path": request.url.path,
                                                                   "origin": request.headers.get("origin")})
            raise PageError(403, "Refused", "This request did not come from this worker's own page (its Origin "
                            "does not match). Open the page and try again.")
        presented = request.headers.get(CSRF_HEADER)
        if presented is None:
            form = await request.form()
            value = form.get(CSRF_FIELD)
            presented = value if isinstance(value, str) else None
        if not signer.csrf_matches(session, presented):
            raise PageError(403, "Refused", "The form's security token is missing or stale (the page was open "
                            "before you logged in again). Reload the page and try again.")
        return session

    PageSession = Annotated[Session, Depends(page_session)]
    DataSession = Annotated[Session, Depends(data_session)]
    ActionSession = Annotated[Session, Depends(action_session)]

    # -- login --

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request, next: str | None = None) -> Response:  # noqa: A002 - the query's name
        if current_session(request) is not None:
            return _secured(RedirectResponse(safe_next(next), status_code=303))
        return render(request, "login.html", {"next": safe_next(next), "error": None})

    @router.post("/login", response_class=HTMLResponse)
    async def login(request: Request, token: Annotated[str, Form(max_length=1024)] = "",
                    next: Annotated[str, Form(max_length=2048)] = "") -> Response:  # noqa: A002
        if not same_origin(request):
            raise PageError(403, "Refused", "The login form was sent from another site's page.")
        if not guard.matches(token.strip()):
            log.warning("web login with a wrong token", extra={"client": request.client.host if request.client
                                                                else None})
            await asyncio.sleep(FAILED_LOGIN_DELAY_S)  # slows down guessing; the token itself is 256 bits
            return render(request, "login.html", {"next": safe_next(next), "error": "That is not this worker's "
                          "token. It is the one clients send as 'Authorization: Bearer …' (SCAIL_WORKER_TOKEN, "
                          "--token, or the SCAIL-WORKER TOKEN line the worker printed)."}, status=401)
        cookie, _ = signer.issue()
        response = RedirectResponse(safe_next(next), status_code=303)
        response.set_cookie(SESSION_COOKIE, cookie, max_age=signer.lifetime_s, path="/", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        log.info("web login", extra={"client": request.client.host if request.client else None})
        return _secured(response)

    @router.post("/logout")
    def logout(session: ActionSession) -> Response:
        signer.revoke(session)
        response = RedirectResponse(PREFIX + "/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return _secured(response)

    # -- pages --

    @router.get("/", response_class=HTMLResponse)
    def dashboard(request: Request, session: PageSession,
                  before: Annotated[int | None, Query(ge=0, le=2**62)] = None) -> Response:
        return render(request, "dashboard.html", {"tables": views.job_tables(store, before), "before": before,
                                                  "health": health().model_dump()}, session=session)

    @router.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_detail(request: Request, job_id: str, session: PageSession) -> Response:
        try:
            job = find_job(store, job_id)
        except ApiError as exc:
            raise PageError(404, "No such job", exc.message) from exc
        return render(request, "job.html", {"page": views.job_page(store, job)}, session=session)

    # -- fragments and live updates (the page's script swaps these in) --

    @router.get("/fragments/jobs", response_class=HTMLResponse)
    def jobs_fragment(request: Request, session: DataSession,
                      before: Annotated[int | None, Query(ge=0, le=2**62)] = None) -> Response:
        return render(request, "_jobs.html", {"tables": views.job_tables(store, before), "before": before},
                      session=session)

    @router.get("/fragments/health", response_class=HTMLResponse)
    def health_fragment(request: Request, session: DataSession) -> Response:
        return render(request, "_health.html", {"health": health().model_dump()}, session=session)

    @router.get("/jobs/{job_id}/fragments/results", response_class=HTMLResponse)
    def results_fragment(request: Request, job_id: str, session: DataSession) -> Response:
        return render(request, "_results.html", {"page": views.job_page(store, find_job(store, job_id))},
                      session=session)

    def until_expiry(session: Session, read: Callable[[], tuple[str, str | None, bool]]):
        def checked() -> tuple[str, str | None, bool]:
            if session.expired:  # a stream outliving its session stops; the script then sends the viewer to log in
                return "expired", "{}", True
            return read()

        return checked

    @router.get("/events")
    def dashboard_events(request: Request, session: DataSession,
                         before: Annotated[int | None, Query(ge=0, le=2**62)] = None) -> StreamingResponse:
        return change_events(request, until_expiry(
            session, lambda: ("jobs", json.dumps(views.live_tables(store, before)), False)))

    @router.get("/jobs/{job_id}/events")
    async def job_events(request: Request, job_id: str, session: DataSession) -> StreamingResponse:
        await run_in_threadpool(find_job, store, job_id)
        return change_events(request, until_expiry(session, status_reader(store, job_id)))

    # -- media --

    @router.get("/jobs/{job_id}/thumbs/{name}")
    def thumbnail(job_id: str, name: str, session: DataSession) -> Response:
        path = thumbnail_file(store.job_dir(find_job(store, job_id).id), name)
        if path is None:
            raise ApiError(404, "not_found", f"job {job_id} has no preview {name!r}", "name")
        media_type = "image/png" if path.suffix == ".png" else "image/jpeg"
        # A preview is written once and never changes.
        return _secured(FileResponse(path, media_type=media_type), cache="private, max-age=86400, immutable")

    @router.get("/jobs/{job_id}/result.mp4")
    def result_mp4(job_id: str, session: DataSession) -> Response:
        return _secured(result_file(store, job_id, "mp4", disposition="inline"))

    @router.get("/jobs/{job_id}/result.zip")
    def result_zip(job_id: str, session: DataSession) -> Response:
        return _secured(result_file(store, job_id, "zip"))

    @router.get("/jobs/{job_id}/frames/{index}")
    def result_frame(job_id: str, index: int, session: DataSession) -> Response:
        return _secured(result_file(store, job_id, "frame", index, disposition="inline"))

    @router.get("/static/{name}")
    def static(request: Request, name: str) -> Response:
        if name not in static_files:
            raise ApiError(404, "not_found", f"no static file {name!r}", "name")
        if name not in PUBLIC_STATIC:
            data_session(request)
        return _secured(FileResponse(STATIC / name, media_type=STATIC_TYPES[Path(name).suffix]), cache="no-cache")

    # -- actions --

    def action(do: Callable[[], object], done: str) -> Response:
        try:
            do()
        except ApiError as exc:
            raise PageError(exc.status, "Not done", exc.message) from exc
        return _secured(RedirectResponse(done, status_code=303))

    @router.post("/jobs/{job_id}/cancel")
    def cancel(job_id: str, session: ActionSession) -> Response:
        return action(lambda: cancel_job(store, runner, job_id), f"{PREFIX}/jobs/{quote(job_id)}")

    @router.post("/jobs/{job_id}/delete")
    def delete(job_id: str, session: ActionSession) -> Response:
        return action(lambda: delete_job(store, job_id), f"{PREFIX}/")

    app.include_router(router)

    @app.get("/", include_in_schema=False)
    @app.get(PREFIX, include_in_schema=False)
    def to_dashboard() -> Response:
        return _secured(RedirectResponse(PREFIX + "/", status_code=303))

    @app.exception_handler(LoginRequired)
    async def _login_required(_: Request, exc: LoginRequired) -> Response:
        return _secured(RedirectResponse(f"{PREFIX}/login?next={quote(safe_next(exc.next_path), safe='/')}",
                                         status_code=303))

    @app.exception_handler(PageError)
    async def _page_error(request: Request, exc: PageError) -> Response:
        return render(request, "error.html", {"title": exc.title, "message": exc.message}, status=exc.status,
                      session=current_session(request))
