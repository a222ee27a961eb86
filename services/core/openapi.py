"""OpenAPI helpers shared by the services' route declarations."""

from __future__ import annotations

from typing import Any


def response_example(example: Any, media_type: str = "application/json") -> dict[str, Any]:
    """``openapi_extra`` documenting a 200 answer by one example."""
    return {"responses": {"200": {"content": {media_type: {"example": example}}}}}
