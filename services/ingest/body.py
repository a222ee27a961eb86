"""Reading a request body safely: size limits, gzip with a cap, JSON with orjson."""

from __future__ import annotations

import json
import zlib
from typing import Any

import orjson
from starlette.types import Receive

GZIP_MAGIC = b"\x1f\x8b"


class BodyError(Exception):
    """The body cannot be used; ``status`` and ``detail`` go back to the client."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def read_limited(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The raw body from the ASGI channel, refusing (413) from Content-Length before reading
    when too large, and as soon as the bytes read pass the limit when it lied or was absent."""
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyError(413, f"body: larger than {limit} bytes")
        except ValueError:
            raise BodyError(400, "content-length: not a number") from None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BodyError(400, "body: the client disconnected before sending all of it")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"body: larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def decompress(raw: bytes, encoding: str, limit: int) -> bytes:
    """Undo gzip (declared, or recognised by its magic bytes), capped at ``limit`` bytes."""
    encoding = encoding.strip().lower()
    if encoding not in ("", "identity", "gzip", "x-gzip"):
        raise BodyError(415, f"content-encoding: {encoding!r} is not supported; use gzip or none")
    if encoding in ("gzip", "x-gzip") or raw[:2] == GZIP_MAGIC:
        inflater = zlib.decompressobj(wbits=31)
        try:
            out = inflater.decompress(raw, limit + 1)
        except zlib.error as exc:
            raise BodyError(400, f"body: invalid gzip data ({exc})") from None
        if len(out) > limit or inflater.unconsumed_tail:
            raise BodyError(413, f"body: larger than {limit} bytes once decompressed")
        return out
    return raw


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _int_like_orjson(text: str) -> int | float:
    value = int(text)
    return value if -(2**63) <= value < 2**64 else float(value)


def parse_json(raw: bytes) -> Any:
    """orjson first (fast); the standard parser for valid JSON orjson refuses (integers
    beyond 64 bits), so one odd value costs one event, not the whole batch."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        first_error = exc
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constants, parse_int=_int_like_orjson)
    except (ValueError, RecursionError):
        raise BodyError(400, f"body: not valid JSON ({first_error})") from None
