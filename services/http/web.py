"""The web chat: a static page at ``/`` and its script and stylesheet under ``/web/`` (services/web/). No
build step: plain HTML, CSS and JavaScript over the same HTTP API as any client. The page holds no key;
the person types one (kept in the tab's sessionStorage)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class WithHeaders:
    """An ASGI app whose every response carries ``headers`` as well: the static mount gets the page's security
    headers, so `/web/index.html` cannot be framed where `/` cannot, and no file of it is type-sniffed."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in self.headers.items():
                    out[name] = value
            await send(message)

        await self.app(scope, receive, send_with)


def install(app: FastAPI) -> None:
    app.include_router(router)
    app.mount("/web", WithHeaders(StaticFiles(directory=WEB_DIR), SECURITY_HEADERS), name="web")
