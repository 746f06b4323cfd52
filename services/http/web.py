"""The web chat: a static page at ``/`` and its script and stylesheet under ``/web/`` (services/web/). No
build step: plain HTML, CSS and JavaScript over the same HTTP API as any client. The page holds no key;
the person types one (kept in the tab's sessionStorage)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# Scripts and styles from this server only, nothing inline, no framing: server text the page shows can
# never run as code, and no other site can overlay it.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

router = APIRouter()


@router.get("/", include_in_schema=False)
async def page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html", headers=SECURITY_HEADERS)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
