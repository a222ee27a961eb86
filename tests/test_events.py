"""The event contract: validation, clock-skew correction, channel, IP anonymisation."""

from __future__ import annotations

from typing import Any

import pytest

from services.core.events import (
    InvalidEvent,
    after_tie,
    anonymize_ip,
    derive_channel,
    normalize,
    parse_time_ms,
    partition_key,
    untimed_times,
)

RECEIVED = parse_time_ms("2026-11-22T12:00:00Z", "t")


def norm(raw: object, sent_at: int | None = None, ip: str = "203.0.113.77", anonymize: bool = True) -> dict[str, Any]:
    return normalize(raw, project="p", received_ms=RECEIVED, sent_at_ms=sent_at, ip=ip, anonymize=anonymize)


def test_valid_page_event_keeps_client_id_and_fields() -> None:
    rec = norm(
        {
            "event_id": "e1",
            "type": "page",
            "name": "Home",
            "anonymous_id": "a1",
            "timestamp": "2026-11-22T11:59:00Z",
            "context": {"page": {"path": "/"}},
            "timing": {"response_ms": 120},
        }
    )
    assert rec["event_id"] == "e1"
    assert rec["timestamp"] == RECEIVED - 60_000
    assert rec["client_timestamp"] == RECEIVED - 60_000
    assert rec["timing"] == {"response_ms": 120.0}
    assert rec["channel"] == "web"
    assert rec["project"] == "p" and rec["kind"] == "event"


def test_missing_event_id_gets_time_ordered_uuid() -> None:
    a = norm({"type": "page", "anonymous_id": "a"})["event_id"]
    b = norm({"type": "page", "anonymous_id": "a"})["event_id"]
    assert a != b and len(a) == 36 and a[14] == "7"  # UUID version 7
    assert a < b


def test_clock_skew_is_corrected_with_sent_at() -> None:
    # The device clock is 1 hour behind: it says it sent at 11:00 while we received at 12:00.
    rec = norm(
        {"type": "screen", "anonymous_id": "d", "timestamp": "2026-11-22T10:59:30Z"},
        sent_at=parse_time_ms("2026-11-22T11:00:00Z", "sent_at"),
    )
    assert rec["timestamp"] == RECEIVED - 30_000
    assert rec["client_timestamp"] == parse_time_ms("2026-11-22T10:59:30Z", "t")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"type": "click", "anonymous_id": "a"}, "type"),
        ({"type": "page"}, "anonymous_id"),
        ({"type": "track", "anonymous_id": "a"}, "name"),
        ({"type": "page", "anonymous_id": {"x": 1}}, "anonymous_id"),
        ({"type": "page", "anonymous_id": "a", "timestamp": "yesterday"}, "timestamp"),
        ({"type": "page", "anonymous_id": "a", "timestamp": "1999-12-31T23:00:00Z"}, "timestamp"),
        ({"type": "page", "anonymous_id": "a", "timestamp": "2030-01-01T00:00:00Z"}, "timestamp"),
        ({"type": "page", "anonymous_id": "a", "properties": [1]}, "properties"),
        ({"type": "page", "anonymous_id": "a", "timing": {"response_ms": "slow"}}, "timing.response_ms"),
        ({"type": "page", "anonymous_id": "a", "timing": {"lcp_ms": -1}}, "timing.lcp_ms"),
        ({"type": "page", "anonymous_id": "a", "error": {"kind": "boom"}}, "error.kind"),
        ({"type": "page", "anonymous_id": "x" * 201}, "anonymous_id"),
        ("not an object", "event"),
    ],
)
def test_invalid_events_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        norm(raw)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_user_id_alone_is_enough() -> None:
    assert norm({"type": "identify", "user_id": 42})["user_id"] == "42"


def test_channel_derivation() -> None:
    iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) Mobile/15E148 Safari/604.1"
    assert derive_channel("page", {"user_agent": iphone}) == "mobile_web"
    assert derive_channel("page", {"user_agent": "Mozilla/5.0 (X11; Linux x86_64)"}) == "web"
    assert derive_channel("track", {"app": {"name": "Shop", "version": "1.2"}}) == "app"
    assert derive_channel("screen", {}) == "app"
    assert norm({"type": "page", "anonymous_id": "a", "channel": "email"})["channel"] == "email"


def test_user_agents_are_parsed_and_bots_flagged() -> None:
    from services.core.useragent import parse_user_agent

    chrome = parse_user_agent(
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/131.0.0.0 Safari/537.36"
    )
    assert (chrome.browser, chrome.os, chrome.device_type, chrome.bot) == ("Chrome", "Windows", "desktop", False)
    ipad = parse_user_agent("Mozilla/5.0 (iPad; CPU OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148")
    assert ipad.device_type == "tablet"
    bot = parse_user_agent("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)")
    assert bot.bot and bot.device_type == "bot"
    rec = norm({"type": "page", "anonymous_id": "a", "context": {"user_agent": "Googlebot/2.1"}})
    assert rec["ua"]["bot"] is True


def test_ip_is_anonymised_by_default_and_kept_when_turned_off() -> None:
    assert anonymize_ip("203.0.113.77") == "203.0.113.0"
    assert anonymize_ip("2001:db8:1234:5678::1") == "2001:db8:1234::"
    assert anonymize_ip("not-an-ip") == ""
    assert norm({"type": "page", "anonymous_id": "a"})["ip"] == "203.0.113.0"
    assert norm({"type": "page", "anonymous_id": "a"}, anonymize=False)["ip"] == "203.0.113.77"


def test_partition_key_is_project_and_device() -> None:
    rec = norm({"type": "page", "anonymous_id": "dev-1"})
    assert partition_key(rec) == b"p\x00dev-1"


def test_pack_groups_rows_under_the_size_limit() -> None:
    import orjson

    from services.core.event_rows import HEAD_FIELDS, PACK_BYTES, ROWS_PREFIX, pack_rows, unpack_rows

    head = [0] * len(HEAD_FIELDS)
    small = [(orjson.dumps([i, "a\nb"]), [*head[:-1], i]) for i in range(3)]  # a newline in a text is escaped
    assert [unpack_rows(p) for p in pack_rows(small)] == [([h for _, h in small], [line for line, _ in small])]
    big = [(orjson.dumps(["x" * (PACK_BYTES // 3)]), head) for _ in range(7)]
    packs = list(pack_rows(big))
    assert len(packs) == 4 and all(p.startswith(ROWS_PREFIX) for p in packs)
    unpacked = [unpack_rows(p) for p in packs]
    assert [line for u in unpacked if u for line in u[1]] == [line for line, _ in big]
    assert all(sum(len(line) for line in u[1]) <= PACK_BYTES for u in unpacked if u)
    assert unpack_rows(orjson.dumps([{"kind": "event"}])) is None  # a record from before rows travelled
    for broken in (
        ROWS_PREFIX + b"[]\n[1]",  # a row without its head
        ROWS_PREFIX + orjson.dumps([[1, 2]]) + b"\n[1]",  # a head of the wrong shape
        ROWS_PREFIX + orjson.dumps([head]) + b"\n{}",  # a row that is not an array
    ):
        with pytest.raises(ValueError):
            unpack_rows(broken)


def test_merged_records_hold_every_row_and_head_in_order_under_the_size_limit() -> None:
    import orjson

    from services.core.event_rows import HEAD_FIELDS, PACK_BYTES, merge_packed, pack_rows, unpack_rows

    def events(device: str, n: int, size: int = 10) -> list[tuple[bytes, list[object]]]:
        return [(orjson.dumps([device, i, "x" * size]), [device, i, *[0] * (len(HEAD_FIELDS) - 2)]) for i in range(n)]

    requests = [events("a", 3), events("b", 1), events("a", 2), events("c", 50, 4000)]
    records = [record for request in requests for record in pack_rows(request)]
    merged = merge_packed(records)
    assert 1 < len(merged) < len(records)  # c's rows (200 kB) do not fit in one record with the others
    unpacked = [u for u in map(unpack_rows, merged) if u]
    assert [h for u in unpacked for h in u[0]] == [h for r in requests for _, h in r]  # heads still match rows
    assert [line for u in unpacked for line in u[1]] == [line for r in requests for line, _ in r]
    assert all(sum(len(line) + 1 for line in u[1]) <= PACK_BYTES + 1 for u in unpacked)
    assert merge_packed(records[:1]) == records[:1] and merge_packed([]) == []
    with pytest.raises(ValueError):
        merge_packed([orjson.dumps([{"kind": "event"}])])


def test_coalesced_records_go_to_the_partition_of_their_devices_key() -> None:
    import orjson
    from aiokafka.partitioner import DefaultPartitioner

    from services.core.event_rows import HEAD_FIELDS, pack_rows, unpack_rows
    from services.core.eventlog.kafka import coalesce, partition_for

    keys = [f"shop\x00dev-{i}".encode() for i in range(40)]
    default = DefaultPartitioner()
    assert all(partition_for(k, 6) == default(k, list(range(6)), list(range(6))) for k in keys)
    head = [0] * len(HEAD_FIELDS)
    records = [("events", k, v) for k in keys for v in pack_rows([(orjson.dumps([k.decode()]), head)])]
    records.append(("events.rejected", b"shop", b'{"error": "x"}'))
    sends = coalesce(records, "events", 6)
    assert ("events.rejected", None, b"shop", b'{"error": "x"}') in sends  # dead letters as they are
    merged = [s for s in sends if s[0] == "events"]
    assert len(merged) == len({s[1] for s in merged}) <= 6  # one record per partition
    for _, partition, key, value in merged:
        unpacked = unpack_rows(value)
        assert unpacked is not None and key is None  # several devices: no key
        assert all(partition_for(orjson.loads(line)[0].encode(), 6) == partition for line in unpacked[1])
    one = coalesce(records[:1], "events", 6)
    assert one == [("events", partition_for(keys[0], 6), keys[0], records[0][2])]  # alone: as it was


def test_nesting_is_checked_to_exactly_sixteen_levels() -> None:
    def nested(levels: int) -> dict[str, object]:
        value: dict[str, object] = {}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    base = {"type": "page", "anonymous_id": "a1"}
    assert norm({**base, "properties": nested(16)})["properties"] == nested(16)
    with pytest.raises(InvalidEvent, match="properties: nested deeper than 16 levels"):
        norm({**base, "properties": nested(17)})
    lists: list[object] = []
    for _ in range(14):
        lists = [lists]
    assert norm({**base, "context": {"x": lists}})["context"] == {"x": lists}  # the object + 15 lists: 16
    with pytest.raises(InvalidEvent, match="context: nested deeper than 16 levels"):
        norm({**base, "context": {"x": [lists]}})


def test_events_without_a_timestamp_keep_their_batch_order() -> None:
    """The last of them at the time received, the ones before it a millisecond apart; events
    with a timestamp keep theirs (None: normalize uses its own)."""
    batch = [{"type": "page"}, {"type": "page", "timestamp": "2026-11-23T10:00:00Z"}, {"type": "page"}, "junk"]
    assert untimed_times(batch, 5_000) == [4_998, None, 4_999, 5_000]
    assert untimed_times([{"type": "page", "timestamp": None}], 5_000) == [5_000]
    record = normalize(
        {"type": "page", "anonymous_id": "a"},
        project="p",
        received_ms=5_000_000_000_000,
        sent_at_ms=None,
        ip="",
        untimed_ms=4_999_999_999_998,
    )
    assert record["timestamp"] == 4_999_999_999_998 and record["received_at"] == 5_000_000_000_000
    assert record["client_timestamp"] is None


def test_events_sent_with_one_time_keep_their_batch_order() -> None:
    """A device's events sent with the same time (a clock that reads seconds) are stored a
    millisecond apart in batch order; distinct times, and out-of-order ones, are left as sent."""
    second = 1_795_000_000_000
    previous = None
    stored = []
    for sent in (second, second, second, second + 1000, second + 1000, second - 5000):
        at = after_tie(sent, sent, previous)
        previous = (sent, at)
        stored.append(at)
    assert stored == [second, second + 1, second + 2, second + 1000, second + 1001, second - 5000]
    assert after_tie(second, second + 7, (second, second + 3)) == second + 7  # already after it (clock skew)


def test_an_event_may_carry_its_users_address() -> None:
    """A server sending for its users knows their address: the event's ``ip`` replaces the
    request's, anonymised like any; a bad one is refused naming the field."""
    assert norm({"type": "page", "anonymous_id": "a", "ip": " 198.51.100.7 "}, ip="10.0.0.1")["ip"] == "198.51.100.0"
    kept = normalize(
        {"type": "page", "anonymous_id": "a", "ip": "2001:db8::1"},
        project="p",
        received_ms=RECEIVED,
        sent_at_ms=None,
        ip="10.0.0.1",
        anonymize=False,
    )
    assert kept["ip"] == "2001:db8::1"
    assert norm({"type": "page", "anonymous_id": "a"}, ip="10.0.0.1")["ip"] == "10.0.0.0"
    for bad in ("localhost", 7):
        with pytest.raises(InvalidEvent) as caught:
            norm({"type": "page", "anonymous_id": "a", "ip": bad})
        assert caught.value.field == "ip"
