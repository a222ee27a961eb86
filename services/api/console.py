"""The console at ``/``: the query API's answers as tables for people (where they abandon, a
funnel, speed against conversion, one person's journey, live abandonment signals).

A static page and its script (``console/``), nothing rendered on the server: every number comes
from the public API with the project's API key, which the page keeps in the tab's
sessionStorage. Served with a strict Content-Security-Policy (this origin only, no inline
script or style) since the tables show what visitors' browsers sent.
"""

from __future__ import annotations

from importlib import resources
from typing import Final

from fastapi import APIRouter, HTTPException, Request, Response

from services.core.assets import Asset


def _asset(name: str, media_type: str) -> Asset:
    return Asset.of(resources.files(__package__).joinpath("console", name).read_text("utf-8"), media_type)


PAGE: Final = _asset("index.html", "text/html; charset=utf-8")
FILES: Final = {
    "console.js": _asset("console.js", "application/javascript"),
    "console.css": _asset("console.css", "text/css"),
}
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _serve(asset: Asset, request: Request) -> Response:
    # Revalidated on every load (a 304 while unchanged), so an upgrade shows at once.
    status, body, headers = asset.answer(
        request.headers.get("if-none-match", ""), request.headers.get("accept-encoding", ""), 0
    )
    return Response(body, status_code=status, media_type=asset.media_type, headers={**headers, **SECURITY_HEADERS})


async def page(request: Request) -> Response:
    """The console."""
    return _serve(PAGE, request)


async def file(request: Request, name: str) -> Response:
    """The console's script and style sheet."""
    asset = FILES.get(name)
    if asset is None:
        raise HTTPException(404, f"name: no console file {name!r}")
    return _serve(asset, request)


def add_console(router: APIRouter) -> None:
    """``GET /`` and ``GET /console/{name}``, outside the OpenAPI document (a page, not an API)."""
    router.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    router.add_api_route("/console/{name}", file, methods=["GET"], include_in_schema=False)
