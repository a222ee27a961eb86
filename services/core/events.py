"""The event contract: validate what trackers send and turn it into log records.

A record is a plain dict (fast to serialise with orjson) that travels through the
event log to the sessionizer. Validation reports one ``"<field>: <reason>"`` per
rejected event so a client can fix exactly what was wrong.
"""

from __future__ import annotations

import functools
import ipaddress
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import uuid_utils

from .useragent import parse_user_agent

EVENT_TYPES: Final = frozenset({"page", "screen", "track", "identify"})
ERROR_KINDS: Final = frozenset({"js", "crash", "http", "anr", "other"})
TIMING_FIELDS: Final = ("response_ms", "ttfb_ms", "load_ms", "lcp_ms", "inp_ms", "cls")
_TIMING_SET: Final = frozenset(TIMING_FIELDS)
OBJECT_FIELDS: Final = ("properties", "context")
MAX_ID_LENGTH: Final = 200
MAX_NAME_LENGTH: Final = 1000
MAX_DEPTH: Final = 16
MIN_TIMESTAMP_MS: Final = 946_684_800_000  # 2000-01-01T00:00:00Z
MAX_FUTURE_MS: Final = 24 * 3600 * 1000  # a client clock may run a day ahead, no more
RECORD_VERSION: Final = 1


class InvalidEvent(ValueError):
    """One event broke the contract; ``str()`` is ``"<field>: <reason>"``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def iso(ms: int) -> str:
    """Epoch milliseconds as the ISO 8601 the API answers with (UTC, milliseconds, ``Z``)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_event_id() -> str:
    """A time-ordered UUID (v7), so server-assigned ids sort by arrival."""
    return str(uuid_utils.uuid7())


def untimed_times(events: Sequence[Any], received_ms: int) -> list[int | None]:
    """The time of each event of one batch that has no timestamp (None for the others): when the
    batch was received, the last of them; the ones before it a millisecond apart, in batch order.

    Why: with one time for all, their order was lost wherever events are sorted by time (the
    analyses break ties by touchpoint, so a server-side batch Home, Search, Product, Cart seemed
    to leave at Product). A millisecond per event keeps the order the client sent them in; the
    time received stays in ``received_at``, and ``client_timestamp`` stays empty for them."""
    untimed = [i for i, e in enumerate(events) if not (isinstance(e, dict) and e.get("timestamp") is not None)]
    out: list[int | None] = [None] * len(events)
    for k, i in enumerate(untimed):
        out[i] = received_ms - (len(untimed) - 1 - k)
    return out


def after_tie(sent: int, stored: int, previous: tuple[int, int] | None) -> int:
    """When to store an event of a device sent at ``sent`` (ms) and due at ``stored``, given the
    previous event of that device in the batch as (sent, stored): a millisecond after the previous
    one when both were sent with the same time, so the batch's order is kept (``client_timestamp``
    keeps the time as sent).

    Why: a client whose clock reads seconds (many servers and back-office systems) sends a burst
    of events with one time, and every analysis would order them by touchpoint instead (Home,
    Search, Product, Cart in one second seemed to leave at Product). Events without a time are
    spaced already (``untimed_times``); events sent with distinct times are untouched."""
    if previous is not None and previous[0] == sent and stored <= previous[1]:
        return previous[1] + 1
    return stored


def parse_time_ms(value: Any, field: str) -> int:
    """ISO 8601 (``Z`` or offset; naive means UTC) to epoch milliseconds."""
    if not isinstance(value, str) or not value:
        raise InvalidEvent(field, "must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(field, f"not an ISO 8601 time: {value[:40]!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _identifier(raw: Mapping[str, Any], field: str) -> str:
    value = raw.get(field)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidEvent(field, "must be a string")
    text = str(value)
    if len(text) > MAX_ID_LENGTH:
        raise InvalidEvent(field, f"longer than {MAX_ID_LENGTH} characters")
    return text


def _text(raw: Mapping[str, Any], field: str, limit: int = MAX_NAME_LENGTH) -> str:
    value = raw.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidEvent(field, "must be a string")
    if len(value) > limit:
        raise InvalidEvent(field, f"longer than {limit} characters")
    return value


def _object(raw: Mapping[str, Any], field: str, *, check_depth: bool = True) -> dict[str, Any]:
    value = raw.get(field)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidEvent(field, "must be an object")
    if check_depth and _deeper_than(value, MAX_DEPTH):
        raise InvalidEvent(field, f"nested deeper than {MAX_DEPTH} levels")
    return value


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether containers nest more than ``limit`` levels (``value`` itself is level 1).

    Recursion is bounded by ``limit``; the input's own nesting is bounded by the JSON parser."""
    if limit == 0:
        return True
    for child in value.values() if type(value) is dict else value:
        kind = type(child)
        if (kind is dict or kind is list) and _deeper_than(child, limit - 1):
            return True
    return False


def _timing(raw: Mapping[str, Any]) -> dict[str, float]:
    timing = _object(raw, "timing", check_depth=False)  # only the numbers below are kept
    out: dict[str, float] = {}
    if not timing:
        return out
    for name, value in timing.items():  # a tracker sends few of them
        if name not in _TIMING_SET or value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidEvent(f"timing.{name}", "must be a number")
        if not math.isfinite(value) or value < 0 or value > 3_600_000:
            raise InvalidEvent(f"timing.{name}", "must be between 0 and 3600000")
        out[name] = float(value)
    return out


def _error(raw: Mapping[str, Any]) -> dict[str, Any] | None:
    if raw.get("error") is None:
        return None
    error = _object(raw, "error", check_depth=False)  # only kind, message and fatal are kept
    kind = error.get("kind", "other")
    if kind not in ERROR_KINDS:
        raise InvalidEvent("error.kind", f"must be one of {', '.join(sorted(ERROR_KINDS))}")
    message = error.get("message", "")
    if not isinstance(message, str):
        raise InvalidEvent("error.message", "must be a string")
    fatal = error.get("fatal", False)
    if not isinstance(fatal, bool):
        raise InvalidEvent("error.fatal", "must be true or false")
    return {"kind": kind, "message": message[:MAX_NAME_LENGTH], "fatal": fatal}


def derive_channel(event_type: str, context: Mapping[str, Any]) -> str:
    """App context means the app; a mobile browser means mobile web; else web."""
    if isinstance(context.get("app"), dict) and context["app"] or event_type == "screen":
        return "app"
    user_agent = context.get("user_agent")
    if isinstance(user_agent, str) and parse_user_agent(user_agent).device_type in ("mobile", "tablet"):
        return "mobile_web"
    return "web"


@functools.lru_cache(maxsize=4096)
def anonymize_ip(ip: str) -> str:
    """Drop the host part: the last octet of IPv4, all but the /48 of IPv6."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ""
    prefix = 24 if addr.version == 4 else 48
    return str(ipaddress.ip_network(f"{addr}/{prefix}", strict=False).network_address)


def _client_ip(raw: Mapping[str, Any], request_ip: str) -> str:
    """The event's own ``ip`` (a server sending for its users knows theirs) or the request's."""
    sent = raw.get("ip")
    if sent is None:
        return request_ip
    if not isinstance(sent, str):
        raise InvalidEvent("ip", "must be a string")
    try:
        return str(ipaddress.ip_address(sent.strip()))
    except ValueError:
        raise InvalidEvent("ip", f"not an IPv4 or IPv6 address: {sent[:50]!r}") from None


def normalize(
    raw: Any,
    *,
    project: str,
    received_ms: int,
    sent_at_ms: int | None,
    ip: str,
    anonymize: bool = True,
    allowed_lateness_ms: int = 7 * 86_400_000,
    untimed_ms: int | None = None,
) -> dict[str, Any]:
    """Validate one raw event and return its log record, or raise InvalidEvent.

    Clock skew: when the batch says when it was sent, the event time is shifted
    by (received - sent), so a device whose clock is off still lands in order.
    An event without a timestamp happened at ``untimed_ms`` (default: when it was received;
    see ``untimed_times`` for several in one batch).
    """
    if not isinstance(raw, dict):
        raise InvalidEvent("event", "must be an object")
    event_type = raw.get("type")
    if event_type not in EVENT_TYPES:
        raise InvalidEvent("type", f"must be one of {', '.join(sorted(EVENT_TYPES))}")
    anonymous_id = _identifier(raw, "anonymous_id")
    user_id = _identifier(raw, "user_id")
    if not anonymous_id and not user_id:
        raise InvalidEvent("anonymous_id", "required unless user_id is given")
    name = _text(raw, "name")
    if event_type == "track" and not name:
        raise InvalidEvent("name", "required for track events")
    event_id = _identifier(raw, "event_id") or new_event_id()
    context = _object(raw, "context")
    properties = _object(raw, "properties")
    page = context.get("page")
    if page is not None and not isinstance(page, dict):
        raise InvalidEvent("context.page", "must be an object")
    channel = _text(raw, "channel", 64) or derive_channel(event_type, context)

    client_ms: int | None = None
    if raw.get("timestamp") is not None:
        client_ms = parse_time_ms(raw["timestamp"], "timestamp")
        skew = received_ms - sent_at_ms if sent_at_ms is not None else 0
        timestamp_ms = client_ms + skew
    else:
        timestamp_ms = received_ms if untimed_ms is None else untimed_ms
    if timestamp_ms < MIN_TIMESTAMP_MS:
        raise InvalidEvent("timestamp", "before 2000-01-01")
    if timestamp_ms > received_ms + MAX_FUTURE_MS:
        raise InvalidEvent("timestamp", "more than a day in the future")

    user_agent = context.get("user_agent")
    agent = parse_user_agent(user_agent) if isinstance(user_agent, str) and user_agent else None
    ip = _client_ip(raw, ip)
    return {
        "v": RECORD_VERSION,
        "kind": "event",
        "project": project,
        "event_id": event_id,
        "type": event_type,
        "name": name,
        "anonymous_id": anonymous_id,
        "user_id": user_id,
        "timestamp": timestamp_ms,
        "client_timestamp": client_ms,
        "sent_at": sent_at_ms,
        "received_at": received_ms,
        "channel": channel,
        "properties": properties,
        "context": context,
        "timing": _timing(raw),
        "error": _error(raw),
        "ip": anonymize_ip(ip) if anonymize else ip,
        # Stored all the same, but flagged: sessions and reports already read may not include it.
        "late": received_ms - timestamp_ms > allowed_lateness_ms,
        "ua": {
            "browser": agent.browser,
            "browser_version": agent.browser_version,
            "os": agent.os,
            "os_version": agent.os_version,
            "device_type": agent.device_type,
            "bot": agent.bot,
        }
        if agent
        else None,
    }


def rejected_record(project: str, index: int, reason: str, raw: Any, received_ms: int) -> dict[str, Any]:
    """A dead letter: the event as sent, with why it was refused."""
    return {
        "v": RECORD_VERSION,
        "kind": "rejected",
        "project": project,
        "index": index,
        "error": reason,
        "payload": raw,
        "received_at": received_ms,
    }


def partition_key(record: Mapping[str, Any]) -> bytes:
    """Project + device: one device's events stay in order in one partition."""
    device = record.get("anonymous_id") or record.get("user_id") or ""
    return f"{record['project']}\x00{device}".encode()
