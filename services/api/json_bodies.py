"""Read a query's body as JSON whatever content type the client declared.

``curl -d '{...}'`` declares ``application/x-www-form-urlencoded``, a browser's ``fetch`` with
a string body ``text/plain``, and some clients declare none; FastAPI then hands the model the raw
bytes and answers a 422 about "a valid dictionary" that names no field. Every body of the query
API is JSON, so a body declared as anything else (or not declared) is read as JSON: a valid one
works, an invalid one gets the usual 422 naming the body.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

JSON = b"application/json"


def declared_json(content_type: bytes) -> bool:
    """Whether a Content-Type header names JSON (``application/json``, ``application/*+json``)."""
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == JSON or (media.startswith(b"application/") and media.endswith(b"+json"))


class JsonBodyRoute(APIRoute):
    """An ``APIRoute`` whose request body is always parsed as JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def as_json(request: Request) -> Response:
            headers = request.scope["headers"]
            declared = next((value for name, value in headers if name == b"content-type"), None)
            if declared is None or not declared_json(declared):
                scope = dict(request.scope)
                scope["headers"] = [(n, v) for n, v in headers if n != b"content-type"] + [(b"content-type", JSON)]
                request = Request(scope, request.receive)
            return await handler(request)

        return as_json
