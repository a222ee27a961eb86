"""Segment's batch format, so apps and servers already instrumented with a Segment (or
RudderStack) library send to Touchpoint by changing only the host they send to.

``POST /v1/batch`` (and ``/v1/b``, where Segment's mobile libraries send) takes Segment's body,
``{"batch": [message, ...], "context": {...}, "sentAt": ...}`` with the write key as the Basic
auth user name (or ``writeKey`` in the body), as well as Touchpoint's own ``{"events": [...]}``;
Segment's one-message endpoints (``/v1/track``, ``/v1/page``, ``/v1/screen``, ``/v1/identify``,
``/v1/alias``, and analytics.js's ``/v1/t``, ``/v1/p``, ``/v1/i``, ``/v1/a``) take one message. Each message becomes the
Touchpoint event it means (pure mapping, below); ingest then validates and stores it like any
other, so a message Touchpoint cannot take is refused with its index and field, as usual.

| Segment | Touchpoint |
| --- | --- |
| ``messageId``, ``anonymousId``, ``userId`` | ``event_id``, ``anonymous_id``, ``user_id`` |
| ``track``'s ``event``; ``page``/``screen``'s ``name`` | ``name`` |
| ``identify``'s ``traits`` | ``properties`` (the person's traits) |
| ``alias`` (``previousId`` → ``userId``) | an ``identify`` linking the two |
| ``group`` | refused: Touchpoint has no accounts (``type`` names it) |
| ``context.userAgent``; ``context.network.wifi``/``cellular`` | ``context.user_agent``; ``context.network.type`` |
| ``timestamp`` (or ``originalTimestamp``), ``sentAt`` | ``timestamp``, ``sent_at`` (clock skew corrected) |
| ``context.ip`` | ``ip`` |
| ``context.device.type`` ``ios``, ``android`` (a platform) | ``mobile`` (an iPad: ``tablet``); ``os.name`` if none |

``context.ip`` becomes the event's ``ip`` (a server-side library sends its user's address
there; without it the address is the request's, the server's own), anonymised like any.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, Final

BATCH_PATH: Final = "/v1/b"  # where Segment's mobile libraries send batches; /v1/batch is shared
# Segment's one-message endpoints (analytics.js uses the short ones): the path says the type.
SINGLE_PATHS: Final = {
    "/v1/track": "track",
    "/v1/t": "track",
    "/v1/page": "page",
    "/v1/p": "page",
    "/v1/screen": "screen",
    "/v1/identify": "identify",
    "/v1/i": "identify",
    "/v1/alias": "alias",
    "/v1/a": "alias",
    "/v1/group": "group",
    "/v1/g": "group",
}
SEGMENT_PATHS: Final = (BATCH_PATH, *SINGLE_PATHS)
# Segment's device.type values that name a platform, not a form factor: the OS they mean.
_PLATFORMS: Final = {"ios": "iOS", "android": "Android"}


def single_as_batch(message: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """A one-message call (``POST /v1/track`` …) as the batch of one it is."""
    batch: dict[str, Any] = {"batch": [{**message, "type": kind}]}
    for key in ("writeKey", "sentAt"):
        if message.get(key) is not None:
            batch[key] = message[key]
    return batch


def is_segment_batch(body: Mapping[str, Any]) -> bool:
    """A Segment body: a ``batch`` list and no Touchpoint ``events``."""
    return "events" not in body and isinstance(body.get("batch"), list)


def basic_auth_user(authorization: str | None) -> str | None:
    """The user name of ``Authorization: Basic …`` (Segment sends the write key there, with an
    empty password), or None."""
    if not authorization or authorization[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(authorization[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[0] or None


def _context(shared: Any, own: Any) -> dict[str, Any]:
    """The message's context over the batch's, with Segment's names turned into Touchpoint's."""
    context: dict[str, Any] = {}
    for part in (shared, own):
        if isinstance(part, dict):
            context.update(part)
    agent = context.pop("userAgent", None)
    if agent is not None and "user_agent" not in context:
        context["user_agent"] = agent
    device = context.get("device")
    platform = device.get("type") if isinstance(device, dict) else None
    if isinstance(device, dict) and isinstance(platform, str) and platform.lower() in _PLATFORMS:
        # Segment's mobile libraries put the platform in device.type: the OS, on a phone or tablet.
        model = device.get("model")
        form = "tablet" if isinstance(model, str) and model.startswith("iPad") else "mobile"
        context["device"] = {**device, "type": form}
        os = context.get("os")
        if not (isinstance(os, dict) and os.get("name")):
            context["os"] = {**(os if isinstance(os, dict) else {}), "name": _PLATFORMS[platform.lower()]}
    network = context.get("network")
    if isinstance(network, dict) and "type" not in network:
        kind = "wifi" if network.get("wifi") else "cellular" if network.get("cellular") else None
        context["network"] = {k: v for k, v in network.items() if k not in ("wifi", "cellular", "bluetooth")}
        if kind:
            context["network"]["type"] = kind
    return context


def from_segment(message: Any, shared_context: Any = None) -> Any:
    """The Touchpoint event a Segment message means; anything not an object is passed on as it
    is, for validation to refuse with its index."""
    if not isinstance(message, dict):
        return message
    kind = message.get("type")
    event: dict[str, Any] = {"type": kind}
    for ours, theirs in (("event_id", "messageId"), ("anonymous_id", "anonymousId"), ("user_id", "userId")):
        if message.get(theirs) is not None:
            event[ours] = message[theirs]
    if kind == "track":
        event["name"] = message.get("event")
    elif kind in ("page", "screen") and message.get("name") is not None:
        event["name"] = message["name"]
    if kind == "identify":
        event["properties"] = message.get("traits") or {}
    elif kind == "alias":  # the earlier id, usually the anonymous one, is this user's
        event.update(type="identify", anonymous_id=message.get("previousId"), properties={})
    elif message.get("properties") is not None:
        event["properties"] = message["properties"]
    timestamp = message.get("timestamp") or message.get("originalTimestamp")
    if timestamp is not None:
        event["timestamp"] = timestamp
    context = _context(shared_context, message.get("context"))
    ip = context.pop("ip", None)
    if ip is not None:  # a server-side library sends its user's address here
        event["ip"] = ip
    if context:
        event["context"] = context
    return event


def segment_events(body: Mapping[str, Any]) -> tuple[list[Any], Any]:
    """A Segment batch's messages as Touchpoint events, and when the batch was sent (``sentAt``
    of the batch, else of its first message that has one)."""
    messages = body["batch"]
    sent_at = body.get("sentAt")
    if sent_at is None:
        sent_at = next((m["sentAt"] for m in messages if isinstance(m, dict) and m.get("sentAt")), None)
    return [from_segment(m, body.get("context")) for m in messages], sent_at
