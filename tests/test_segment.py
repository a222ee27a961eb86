"""Segment's message format mapped to Touchpoint events: pure functions, tested directly."""

from __future__ import annotations

import base64

from services.ingest.segment import basic_auth_user, from_segment, is_segment_batch, segment_events, single_as_batch


def test_messages_become_the_events_they_mean() -> None:
    shared = {"library": {"name": "analytics-python"}, "userAgent": "batch-agent", "ip": "198.51.100.7"}
    track = {"type": "track", "event": "Signed Up", "messageId": "m1", "userId": 42, "properties": {"plan": "pro"}}
    assert from_segment(track, shared) == {
        "type": "track",
        "event_id": "m1",
        "user_id": 42,
        "name": "Signed Up",
        "properties": {"plan": "pro"},
        "ip": "198.51.100.7",  # the user's address the server library sent, the event's own
        "context": {"library": {"name": "analytics-python"}, "user_agent": "batch-agent"},
    }
    identify = {"type": "identify", "anonymousId": "a1", "userId": "u1", "traits": {"email": "x@y"}}
    assert from_segment(identify)["properties"] == {"email": "x@y"}
    alias = {"type": "alias", "previousId": "a0", "userId": "u1", "originalTimestamp": "2026-11-23T10:00:00Z"}
    assert from_segment(alias) == {
        "type": "identify",
        "user_id": "u1",
        "anonymous_id": "a0",
        "properties": {},
        "timestamp": "2026-11-23T10:00:00Z",
    }
    screen = {
        "type": "screen",
        "name": "Cart",
        "anonymousId": "d1",
        "context": {"network": {"cellular": True, "wifi": False, "carrier": "T"}, "userAgent": "own"},
    }
    assert from_segment(screen, shared)["context"]["network"] == {"carrier": "T", "type": "cellular"}
    assert from_segment(screen, shared)["context"]["user_agent"] == "own"  # the message's over the batch's
    assert from_segment({"type": "group", "groupId": "g"})["type"] == "group"  # validation refuses it


def test_a_mobile_librarys_platform_is_a_device_type_and_an_os() -> None:
    """Segment's iOS and Android libraries send the platform as device.type: breakdowns by device
    type would show "ios" and "android" beside "mobile" and "desktop"."""

    def context(device: dict[str, str], **more: object) -> object:
        message = {"type": "screen", "name": "Cart", "anonymousId": "d1", "context": {"device": device, **more}}
        return from_segment(message)["context"]

    assert context({"type": "ios", "model": "iPhone15,2"}) == {
        "device": {"type": "mobile", "model": "iPhone15,2"},
        "os": {"name": "iOS"},
    }
    assert context({"type": "ios", "model": "iPad13,1"})["device"]["type"] == "tablet"  # type: ignore[index]
    assert context({"type": "android"}, os={"name": "Android", "version": "14"}) == {
        "device": {"type": "mobile"},
        "os": {"name": "Android", "version": "14"},  # as sent
    }
    assert context({"type": "tablet"}) == {"device": {"type": "tablet"}}  # a form factor: as sent
    assert from_segment("junk") == "junk"


def test_batches_and_keys() -> None:
    assert is_segment_batch({"batch": []}) and not is_segment_batch({"events": [], "batch": []})
    assert not is_segment_batch({"batch": "x"})
    events, sent_at = segment_events({"batch": [{"type": "page", "sentAt": "2026-11-23T10:00:01Z"}, 7]})
    assert events == [{"type": "page"}, 7] and sent_at == "2026-11-23T10:00:01Z"
    assert segment_events({"batch": [], "sentAt": "s"})[1] == "s"
    key = base64.b64encode(b"wk_1:").decode()
    assert basic_auth_user(f"Basic {key}") == "wk_1" and basic_auth_user(f"basic {key}") == "wk_1"
    assert basic_auth_user("Bearer wk_1") is None and basic_auth_user("Basic !!") is None
    assert basic_auth_user(None) is None and basic_auth_user("Basic " + base64.b64encode(b":pw").decode()) is None


def test_a_single_message_is_a_batch_of_one() -> None:
    message = {"event": "Signed Up", "userId": "u1", "writeKey": "wk", "sentAt": "2026-11-23T10:00:00Z"}
    batch = single_as_batch(message, "track")
    assert batch == {"batch": [{**message, "type": "track"}], "writeKey": "wk", "sentAt": "2026-11-23T10:00:00Z"}
    assert single_as_batch({"type": "page", "name": "x"}, "identify")["batch"][0]["type"] == "identify"  # the path
