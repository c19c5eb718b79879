"""The worker's web page (/ui) in a real browser: Debian's Chromium driven by Playwright, against the suite's real
worker process on the tiny checkpoint (the ``worker`` fixture). One screenshot per state goes to
test-artifacts/web/ (SCAIL_TEST_ARTIFACTS moves it).

The same module checks, with raw HTTP, that no page, fragment, stream, file or action answers without a valid
session, and that state-changing requests from another origin or without the CSRF token change nothing.
"""

from __future__ import annotations

import http.server
import os
import re
import threading
from pathlib import Path

import pytest
import requests
from worker_helpers import LONG_SPEC, SHORT_SPEC, wait_until

from backend.worker.security import TokenGuard
from backend.worker.web.sessions import SESSION_COOKIE, SessionSigner

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("SCAIL_TEST_ARTIFACTS", REPO_ROOT / "test-artifacts")) / "web"
CHROMIUM = Path(os.environ.get("SCAIL_CHROMIUM", "/usr/bin/chromium"))
# This machine's network is closed: without the background-networking flags Chromium keeps trying to reach
# Google's services at every start.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]
WAIT_MS = 180_000  # the 2-core machine may be running other suites at the same time
# A job that holds the runner until the test cancels it (one 41-frame window, many steps: minutes on the CPU).
BLOCKER_SPEC = {**SHORT_SPEC, "frame_range": [0, 41], "steps": 200, "step_cache": "off"}  # every step runs: it must block
# Two windows (120 driving frames) with enough steps that the page sees the first window's frames arrive live.
WATCHED_SPEC = {**LONG_SPEC, "steps": 4}


# -- fixtures --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: the web page tests drive Debian's Chromium. `make setup` installs it when "
                    "run as root (apt-get install chromium); otherwise install it with `sudo apt-get install "
                    "chromium`, or point SCAIL_CHROMIUM at a Chromium binary", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is not installed: `pip install -e '.[dev]'` (it drives the system Chromium; no "
                    "browser download is needed)", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    """A fresh browser profile (no cookies) per test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))
    yield opened
    context.close()
    assert not errors, f"the page's script failed: {errors}"


def screenshot(page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def log_in(page, worker) -> None:
    page.goto(f"{worker.url}/")
    page.wait_for_url(re.compile(r".*/ui/login\?next=/ui/$"))
    page.fill("#token", worker.token)
    page.click("#login-form button[type=submit]")
    page.wait_for_url(f"{worker.url}/ui/")


def submit(worker, inputs, spec) -> str:
    return worker.client().submit(spec, inputs.files())


def wait_status(worker, job_id: str, *statuses: str, timeout: float = 180.0) -> dict:
    client = worker.client()
    return wait_until(lambda: (status := client.status(job_id))["status"] in statuses and status, timeout, 0.1)


def job_row(page, table: str, job_id: str):
    return page.locator(f"#{table} tr[data-job='{job_id}']")


# -- in the browser --------------------------------------------------------------------------------------------


def test_login_sets_a_strict_http_only_cookie_and_refuses_a_wrong_token(page, worker):
    page.goto(f"{worker.url}/ui/")
    page.wait_for_url(re.compile(r".*/ui/login\?next=/ui/$"))
    page.fill("#token", "not-the-token-" + "x" * 20)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error")
    assert "not this worker's token" in page.inner_text("#login-error")
    assert page.context.cookies() == []
    screenshot(page, "00-login-refused.png")

    log_in(page, worker)
    (cookie,) = page.context.cookies()
    assert cookie["name"] == SESSION_COOKIE and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/" and worker.token not in cookie["value"]
    assert worker.token not in page.url and worker.token not in page.content()
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script can read the session
    assert page.inner_text("#health-device") == "cpu"

    page.click("button:text('Log out')")
    page.wait_for_url(re.compile(r".*/ui/login$"))
    page.goto(f"{worker.url}/ui/")
    page.wait_for_url(re.compile(r".*/ui/login\?next=/ui/$"))


def test_a_job_goes_from_queued_to_running_to_succeeded_with_its_thumbnails(page, worker, inputs):
    client = worker.client()
    blocker = submit(worker, inputs, BLOCKER_SPEC)
    wait_status(worker, blocker, "running")
    watched = submit(worker, inputs, WATCHED_SPEC)
    log_in(page, worker)

    # Queued behind the blocker, with its inputs' previews already made at submission.
    row = job_row(page, "queued", watched)
    row.wait_for()
    assert row.locator("td").first.inner_text() == str(client.status(watched)["queue_position"] + 1)
    assert job_row(page, "running", blocker).count() == 1
    screenshot(page, "01-queued.png")
    page.goto(f"{worker.url}/ui/jobs/{watched}")
    assert page.locator("#inputs img").count() == 1 + 6  # the reference and six driving frames
    page.goto(f"{worker.url}/ui/")

    # The dashboard follows the queue live: the blocker leaves, the watched job starts.
    page.evaluate("window.stayedOnPage = true")
    client.cancel(blocker)
    job_row(page, "running", watched).wait_for()
    job_row(page, "finished", blocker).wait_for()
    assert page.evaluate("window.stayedOnPage") is True, "the tables were updated without reloading the page"

    # The job page: progress arrives over server-sent events, the first window's frames while the second runs.
    page.goto(f"{worker.url}/ui/jobs/{watched}")
    page.evaluate("window.stayedOnPage = true")
    page.wait_for_function("() => document.querySelector('#live .js-progress').value > 0")
    page.wait_for_selector("#result .result-thumb")
    live = page.evaluate("window.stayedOnPage === true && document.body.dataset.finished === 'false'")
    assert live, "the first window's thumbnails appeared before the job finished, without a reload"
    assert "window" in page.inner_text("#live .js-progress-text")
    screenshot(page, "02-running.png")

    page.wait_for_selector(".badge.status-succeeded")
    final = client.status(watched)
    assert final["status"] == "succeeded" and final["result"]["frames"] == 120
    # Eight thumbnails per window, both windows; every image actually loads.
    assert page.locator("#result h3").count() == 2
    assert page.locator("#result .result-thumb").count() == 16
    assert page.evaluate("[...document.images].every(image => image.complete && image.naturalWidth > 0)")
    page.wait_for_function("() => document.querySelector('#result-video').readyState >= 1")
    duration = page.evaluate("document.querySelector('#result-video').duration")
    assert duration == pytest.approx(120 / final["result"]["fps"], abs=0.1)
    assert "run" in page.inner_text("#timings") or page.locator("#timings dd").count() > 3
    screenshot(page, "03-succeeded.png")

    # The previews were made once (at submission and per window), not per request.
    thumbs = worker.data_dir / "jobs" / watched / "thumbs"
    before = {path.name: path.stat().st_mtime_ns for path in thumbs.iterdir()}
    page.reload()
    page.wait_for_function("() => [...document.images].every(image => image.complete && image.naturalWidth > 0)")
    assert {path.name: path.stat().st_mtime_ns for path in thumbs.iterdir()} == before
    assert len([name for name in before if name.endswith(".jpg")]) == 6 + 16

    page.goto(f"{worker.url}/ui/")
    assert "120 frames, 96×64" in job_row(page, "finished", watched).inner_text()


def test_cancel_and_delete_ask_first_and_a_cross_site_form_changes_nothing(page, worker, inputs, tmp_path):
    client = worker.client()
    blocker = submit(worker, inputs, BLOCKER_SPEC)
    wait_status(worker, blocker, "running")
    queued = submit(worker, inputs, SHORT_SPEC)
    log_in(page, worker)

    # Another site's page (localhost is another site than 127.0.0.1) posting to the worker while we are logged in.
    attack = tmp_path / "attack"
    attack.mkdir()
    (attack / "index.html").write_text(
        f'<form method="post" action="{worker.url}/ui/jobs/{queued}/cancel">'
        '<input name="csrf_token" value="guessed"></form><script>document.forms[0].submit()</script>')
    server = http.server.ThreadingHTTPServer(
        ("localhost", 0), lambda *args: http.server.SimpleHTTPRequestHandler(*args, directory=str(attack)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        page.goto(f"http://localhost:{server.server_address[1]}/index.html")
        page.wait_for_url(re.compile(r".*/ui/login.*"))  # SameSite=Strict: the browser did not send the cookie
    finally:
        server.shutdown()
        server.server_close()
    assert client.status(queued)["status"] == "queued"

    # Cancel a queued job from the dashboard: dismissing the confirmation does nothing, accepting cancels it.
    page.goto(f"{worker.url}/ui/")
    row = job_row(page, "queued", queued)
    row.wait_for()
    messages: list[str] = []

    def answer(accept: bool):
        def handle(dialog):
            messages.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()
        return handle

    page.once("dialog", answer(False))
    row.locator("form.js-cancel button").click()
    assert messages and queued in messages[-1]
    assert client.status(queued)["status"] == "queued"
    page.once("dialog", answer(True))
    row.locator("form.js-cancel button").click()
    page.wait_for_url(f"{worker.url}/ui/jobs/{queued}")
    assert client.status(queued)["status"] == "canceled"
    assert page.inner_text(".js-status").startswith("canceled")
    screenshot(page, "04-canceled-queued.png")

    # Cancel the running job from its page: it stops at the next step, and the page follows it.
    page.goto(f"{worker.url}/ui/jobs/{blocker}")
    page.wait_for_function("() => document.querySelector('#live .js-progress').value > 0")
    page.once("dialog", answer(True))
    page.click("form.js-cancel button")
    page.wait_for_selector(".badge.status-canceled")
    stopped = wait_status(worker, blocker, "canceled")
    assert stopped["cancel_requested"] and stopped["detail"]["step"] < BLOCKER_SPEC["steps"]
    screenshot(page, "05-canceled-running.png")

    # Delete, also after a confirmation; the job and its files are gone.
    page.goto(f"{worker.url}/ui/jobs/{queued}")
    page.once("dialog", answer(True))
    page.click("form.js-delete button")
    page.wait_for_url(f"{worker.url}/ui/")
    assert job_row(page, "finished", queued).count() == 0
    assert requests.get(f"{worker.url}/v1/jobs/{queued}", headers={"Authorization": f"Bearer {worker.token}"},
                        timeout=10).status_code == 404
    assert not (worker.data_dir / "jobs" / queued).exists()


def test_a_failed_job_shows_its_error_message(page, worker, inputs):
    client = worker.client()
    blocker = submit(worker, inputs, BLOCKER_SPEC)
    wait_status(worker, blocker, "running")
    doomed = submit(worker, inputs, SHORT_SPEC)
    # The stored driving clip is damaged while the job waits (a disk fault): the job fails when it runs.
    stored = worker.data_dir / "jobs" / doomed / "inputs" / "driving.video"
    stored.write_bytes(stored.read_bytes()[:2000])
    client.cancel(blocker)
    failed = wait_status(worker, doomed, "failed")
    message = failed["error"]["message"]
    assert failed["error"]["field"] == "driving" and message

    log_in(page, worker)
    row = job_row(page, "finished", doomed)
    row.wait_for()
    assert row.get_attribute("data-status") == "failed"
    assert message in row.locator(".js-error").inner_text()
    screenshot(page, "06-failed-dashboard.png")
    page.goto(f"{worker.url}/ui/jobs/{doomed}")
    assert message in page.inner_text("#job-error")
    assert "driving" in page.inner_text("#job-error code")
    screenshot(page, "07-failed-job.png")


# -- without a valid session (raw HTTP, no retries) ------------------------------------------------------------


def _session_cookie(worker) -> str:
    response = requests.post(f"{worker.url}/ui/login", data={"token": worker.token, "next": "/ui/"},
                             headers={"Origin": worker.url}, allow_redirects=False, timeout=10)
    assert response.status_code == 303, response.text
    return response.cookies[SESSION_COOKIE]


def _protected_urls(job_id: str) -> tuple[list[str], list[str], list[str]]:
    """(pages, data, actions) of the web page, for one succeeded job."""
    pages = ["/ui/", "/ui/?before=5", f"/ui/jobs/{job_id}"]
    data = ["/ui/fragments/jobs", "/ui/fragments/health", f"/ui/jobs/{job_id}/fragments/results", "/ui/events",
            f"/ui/jobs/{job_id}/events", f"/ui/jobs/{job_id}/thumbs/reference.png",
            f"/ui/jobs/{job_id}/thumbs/driving_000000.jpg", f"/ui/jobs/{job_id}/thumbs/window_0000_000000.jpg",
            f"/ui/jobs/{job_id}/result.mp4", f"/ui/jobs/{job_id}/result.zip", f"/ui/jobs/{job_id}/frames/0",
            "/ui/static/app.js"]
    actions = [f"/ui/jobs/{job_id}/cancel", f"/ui/jobs/{job_id}/delete", "/ui/logout"]
    return pages, data, actions


def test_the_urls_checked_below_are_every_route_of_the_page(tmp_path):
    from fastapi import FastAPI

    from backend.worker.schemas import HealthPublic
    from backend.worker.store import JobStore
    from backend.worker.web import mount_web

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    mount_web(app, store=JobStore(tmp_path), runner=None, guard=TokenGuard("t" * 32),
              health=lambda: HealthPublic(status="ok", version="0", api="v1", authenticated=True))
    routes = {(method, route.path) for route in app.routes for method in getattr(route, "methods", ())}
    pages, data, actions = _protected_urls("{job_id}")
    checked = {("GET", url.split("?")[0]) for url in pages + data} | {("POST", url) for url in actions}
    checked = {(method, re.sub(r"/(thumbs|frames|static)/[^/]+$", r"/\1/{name}", path)) for method, path in checked}
    routes = {(method, path.replace("{index}", "{name}")) for method, path in routes}
    public = {("GET", "/"), ("GET", "/ui"), ("GET", "/ui/login"), ("POST", "/ui/login")}
    assert routes - public - checked == set(), "a route of the page is missing from the refusal test"


def test_every_page_and_action_is_refused_without_a_valid_session(worker, inputs):
    client = worker.client()
    done = submit(worker, inputs, SHORT_SPEC)
    wait_status(worker, done, "succeeded")
    blocker = submit(worker, inputs, BLOCKER_SPEC)
    queued = submit(worker, inputs, SHORT_SPEC)
    pages, data, actions = _protected_urls(done)
    url = worker.url

    expired_signer = SessionSigner(TokenGuard(worker.token), lifetime_s=-10)
    logged_out = _session_cookie(worker)
    assert requests.post(f"{url}/ui/logout", cookies={SESSION_COOKIE: logged_out}, allow_redirects=False,
                         headers={"Origin": url, "X-CSRF-Token": SessionSigner(TokenGuard(worker.token))
                                  .verify(logged_out).csrf}, timeout=10).status_code == 303
    refused_cookies = {
        "none": None,
        "garbage": "not-a-session",
        "another token's": SessionSigner(TokenGuard("another-token-" + "y" * 20)).issue()[0],
        "expired": expired_signer.issue()[0],
        "logged out": logged_out,
        "tampered": _session_cookie(worker)[:-2] + "AA",
    }
    bearer = {"Authorization": f"Bearer {worker.token}"}  # the API's header is not a page session
    for label, cookie in refused_cookies.items():
        cookies = {SESSION_COOKIE: cookie} if cookie else {}
        for path in pages:
            response = requests.get(url + path, cookies=cookies, headers=bearer, allow_redirects=False, timeout=10)
            assert response.status_code == 303, (label, path, response.status_code)
            assert response.headers["location"].startswith("/ui/login?next="), (label, path)
            assert done not in response.text
        for path in data:
            response = requests.get(url + path, cookies=cookies, headers=bearer, allow_redirects=False, timeout=10)
            assert response.status_code == 401, (label, path, response.status_code)
            assert response.json()["error"]["code"] == "unauthorized"
        for path in actions:
            for job in (done, queued):
                response = requests.post(url + path.replace(done, job), cookies=cookies, allow_redirects=False,
                                         headers={"Origin": url}, data={"csrf_token": "x"}, timeout=10)
                assert response.status_code == 303 and response.headers["location"].startswith("/ui/login"), (
                    label, path)
    assert client.status(done)["status"] == "succeeded" and client.status(queued)["status"] == "queued"

    # The login form and its stylesheet are all that answer without a session.
    assert requests.get(f"{url}/ui/login", timeout=10).status_code == 200
    assert requests.get(f"{url}/ui/static/style.css", timeout=10).status_code == 200

    # With a valid session, a change needs this worker's own origin and the session's CSRF token.
    cookie = _session_cookie(worker)
    csrf = SessionSigner(TokenGuard(worker.token)).verify(cookie).csrf
    cookies = {SESSION_COOKIE: cookie}
    cancel = f"{url}/ui/jobs/{queued}/cancel"
    refused_requests = {
        "another origin": ({"Origin": "http://evil.example"}, {"csrf_token": csrf}),
        "an opaque origin": ({"Origin": "null"}, {"csrf_token": csrf}),
        "a cross-site fetch without Origin": ({"Sec-Fetch-Site": "cross-site"}, {"csrf_token": csrf}),
        "another site's referer": ({"Referer": "http://evil.example/page"}, {"csrf_token": csrf}),
        "no origin at all": ({}, {"csrf_token": csrf}),
        "no CSRF token": ({"Origin": url}, {}),
        "a wrong CSRF token": ({"Origin": url}, {"csrf_token": csrf[:-2] + "xx"}),
        "another session's CSRF token": ({"Origin": url}, {"csrf_token": SessionSigner(TokenGuard(
            worker.token)).verify(_session_cookie(worker)).csrf}),
    }
    for label, (headers, form) in refused_requests.items():
        for target in (cancel, f"{url}/ui/jobs/{done}/delete"):
            response = requests.post(target, cookies=cookies, headers=headers, data=form, allow_redirects=False,
                                     timeout=10)
            assert response.status_code == 403, (label, target, response.status_code)
    assert client.status(done)["status"] == "succeeded" and client.status(queued)["status"] == "queued"
    response = requests.post(f"{url}/ui/login", data={"token": worker.token}, allow_redirects=False,
                             headers={"Origin": "http://evil.example"}, timeout=10)
    assert response.status_code == 403 and SESSION_COOKIE not in response.cookies

    # The same request from the page itself goes through (the header form of the token works too).
    response = requests.post(cancel, cookies=cookies, headers={"Origin": url, "X-CSRF-Token": csrf},
                             allow_redirects=False, timeout=10)
    assert response.status_code == 303 and client.status(queued)["status"] == "canceled"
    page = requests.get(f"{url}/ui/", cookies=cookies, timeout=10)
    assert page.status_code == 200 and done in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    client.cancel(blocker)
    wait_status(worker, blocker, "canceled")


def test_the_health_panel_lists_a_cluster_gateways_nodes_and_engines():
    """A cluster gateway's /v1/health adds fields this page does not know by name (``cluster``: its nodes, their
    GPUs, the engine actors and the fair-share queue); the panel lists whatever they hold, nested objects folded."""
    from fastapi.templating import Jinja2Templates

    from backend.worker.web import routes, views

    templates = Jinja2Templates(directory=str(routes.PACKAGE / "templates"))
    templates.env.filters.update(views.FILTERS)
    engine = {"name": "engine-0", "node_id": "a1b2", "node_address": "10.0.0.5", "state": "busy", "gpus": 1,
              "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_memory_gib": 79.1, "fp8": False, "pinned_loras": None,
              "job_id": "4UN7k_BbVXrRhTCb5dMz4w", "jobs_done": 12, "performance": {"attention_backend_resolved": "cudnn"}}
    health = {
        "status": "ok", "version": "0.1.0", "api": "v1", "authenticated": True, "device": "ray",
        "gpu": None, "model": {"loaded": True, "checkpoint": "/models/SCAIL-2", "dtype": "bfloat16", "loras": []},
        "queue": {"queued": 3, "running": 2}, "limits": {"max_frames": 2400}, "features": {"auto_masks": False},
        "performance": None,
        "cluster": {"address": "10.0.0.1:6379", "connected": True, "gpus": 9.0, "engines_idle": 7,
                    "nodes": [{"id": "a1b2", "address": "10.0.0.5", "alive": True, "gpus": 8.0, "engines": 8,
                               "labels": {"scail-max-size": "704p"}, "problem": None},
                              {"id": "c3d4", "address": "10.0.0.6", "alive": False, "gpus": 1.0, "engines": 0,
                               "labels": {}, "problem": "no checkpoint at /models/SCAIL-2"}],
                    "engines": [engine], "queue": {"queued": 3, "running": 2, "clients": 2, "unplaceable": 0}},
    }
    html = templates.get_template("_health.html").render(health=health)
    assert 'id="health-cluster"' in html and "every node's GPUs" in html
    for text in ("10.0.0.1:6379", "a1b2", "10.0.0.6", "no checkpoint at /models/SCAIL-2", "704p", "engine-0",
                 "NVIDIA H100 80GB HBM3", "4UN7k_BbVXrRhTCb5dMz4w", "cudnn", "unplaceable", "engines idle"):
        assert text in html, text
    single = templates.get_template("_health.html").render(health={**health, "cluster": None, "device": "cpu"})
    assert "health-cluster" not in single and "No GPU: this worker runs on cpu" in single
