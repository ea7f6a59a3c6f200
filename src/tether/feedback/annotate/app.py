"""The web app: Starlette routes over the store (imported only when serving; needs starlette).

Pages are static files shipped in the package (``static/``): the browser fetches items as JSON
and puts model text into the page with ``textContent`` only, so markup in a completion shows as
text; the Content-Security-Policy allows no inline or foreign script on top of that.

API (JSON; ``Authorization: Bearer <token>``, the token from the annotator's private link):

- ``GET  /api/me``            who the token belongs to, the task
- ``POST /api/next``          lease the next item (the open one again, if any) or ``{"item": null}``
- ``POST /api/judgements``    ``{"item", "idempotency_key", "choice" | "ranking", "reason"?}``:
  201 stored, 200 the same request already stored (a retry), 4xx refused with nothing changed
- ``GET  /api/admin/report``  the admin page's figures (admins only)

The answer to a judgement is sent only after its transaction has committed.
"""

from __future__ import annotations

import json
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tether.feedback.annotate.report import build_report
from tether.feedback.annotate.store import Store, StoreError

STATIC = Path(__file__).parent / "static"
MAX_BODY = 16 * 1024  # bytes; a judgement with a full-length reason is under 9 KB
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=SECURITY_HEADERS)


def _ok(payload: dict, status: int = 200) -> JSONResponse:
    return JSONResponse(payload, status_code=status, headers=SECURITY_HEADERS)


async def _read_json(request: Request):
    """The request's JSON body, or StoreError 411/413/415/400."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise StoreError(415, "send the body as application/json")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise StoreError(413, f"body over {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():  # also caps chunked bodies that declare no length
        body += chunk
        if len(body) > MAX_BODY:
            raise StoreError(413, f"body over {MAX_BODY} bytes")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise StoreError(400, f"body is not valid JSON: {e}") from None


def create_app(store: Store) -> Starlette:
    async def who(request: Request, admin: bool = False):
        auth = request.headers.get("authorization", "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else None
        annotator = await run_in_threadpool(store.authenticate, token)
        if annotator is None:
            raise StoreError(401, "missing or unknown access token; open your private link again")
        if admin and not annotator.is_admin:
            raise StoreError(403, "this page is for admins")
        return annotator

    def handled(endpoint):
        async def wrapper(request: Request):
            try:
                return await endpoint(request)
            except StoreError as e:
                return _error(e.status, e.message)

        return wrapper

    async def me(request: Request):
        a = await who(request)
        return _ok({"name": a.name, "admin": a.is_admin, "task": store.task, "overlap": store.overlap})

    async def next_item(request: Request):
        a = await who(request)
        view = await run_in_threadpool(store.next_item, a)
        return _ok(view if view is not None else {"item": None})

    async def judgement(request: Request):
        a = await who(request)
        body = await _read_json(request)
        status, answer = await run_in_threadpool(store.submit, a, body)  # committed when this returns
        return _ok(answer, status)

    async def admin_report(request: Request):
        await who(request, admin=True)
        return _ok(await run_in_threadpool(build_report, store))

    def page(name: str):
        async def serve(request: Request):
            return FileResponse(STATIC / name, headers=SECURITY_HEADERS)

        return serve

    routes = [
        Route("/", page("annotate.html")),
        Route("/admin", page("admin.html")),
        Route("/api/me", handled(me)),
        Route("/api/next", handled(next_item), methods=["POST"]),
        Route("/api/judgements", handled(judgement), methods=["POST"]),
        Route("/api/admin/report", handled(admin_report)),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes)


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def serve(project_dir: str | Path, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Runs the app with uvicorn until interrupted."""
    import uvicorn

    if host not in LOOPBACK:
        print(f"tether annotate: WARNING: serving on {host}, reachable from other machines; anyone who can reach it and holds a link can annotate. Put it behind HTTPS.", flush=True)
    store = Store(project_dir)
    print(f"tether annotate: serving {project_dir} ({store.task}, overlap {store.overlap}) on http://{host}:{port}/ (admin page: /admin)", flush=True)
    uvicorn.run(create_app(store), host=host, port=port, log_level="warning", access_log=False)


__all__ = ["MAX_BODY", "create_app", "serve"]
