"""Bad input through the real HTTP path: every answer is a 2xx or a clear 4xx, never a 500,
and /health stays 200. Schemathesis drives the OpenAPI; hypothesis builds hostile payloads."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.harness import API_KEY, WRITE_KEY, Proc, journey_with, new_proc


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = new_proc("up", tmp_path_factory.mktemp("bad")).start()
    yield proc
    proc.stop()


def assert_clear(r: httpx.Response) -> None:
    assert r.status_code < 500, f"{r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:
        body = r.json()
        detail = body.get("error") or body.get("detail")
        assert detail, f"a {r.status_code} must say what is wrong: {body}"
        if isinstance(detail, str):
            assert ":" in detail, f"the error should name the field: {detail!r}"


def post(proc: Proc, content: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{proc.url}/v1/batch",
        content=content,
        headers={"X-Write-Key": WRITE_KEY, "Content-Type": "application/json", **headers},
        timeout=30,
    )


def test_schemathesis_against_the_openapi(up: Proc) -> None:
    exe = Path(sys.executable).with_name("schemathesis")
    result = subprocess.run(
        [
            str(exe),
            "run",
            f"{up.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--generation-deterministic",
            # An event stream answers for as long as the client listens: its bad input is tested
            # in tests/test_e2e_embedded.py.
            "--exclude-path",
            "/v1/abandonments/stream",
            "-H",
            f"X-Write-Key: {WRITE_KEY}",
            "-H",
            f"Authorization: Bearer {API_KEY}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert httpx.get(f"{up.url}/health").status_code == 200


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=50),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
hostile_strings = st.sampled_from(
    [
        "'; DROP TABLE events; --",
        "<script>alert(1)</script>",
        "\x00\x01\x1b[31m",
        "{project:String}",
        "\u202e\ufeff",
        "🛒" * 50,
        "null",
        "undefined",
        "[object Object]",
    ]
) | st.text(max_size=300)
events = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["page", "screen", "track", "identify", "PAGE", ""]) | json_values,
        "name": hostile_strings | json_values,
        "anonymous_id": hostile_strings | json_values,
        "user_id": hostile_strings | json_values,
        "event_id": hostile_strings | json_values,
        "timestamp": st.sampled_from(
            ["2026-11-22T10:00:00Z", "1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-13-45T99:00:00Z", ""]
        )
        | json_values,
        "properties": json_values,
        "context": json_values,
        "timing": st.dictionaries(st.sampled_from(["response_ms", "lcp_ms", "cls"]), json_values, max_size=3),
        "error": json_values,
        "channel": json_values,
    },
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(events | json_values, max_size=8), sent_at=st.none() | hostile_strings)
def test_hypothesis_payloads_get_clear_answers(up: Proc, batch: list[Any], sent_at: Any) -> None:
    body: dict[str, Any] = {"events": batch}
    if sent_at is not None:
        body["sent_at"] = sent_at
    r = post(up, orjson.dumps(body, option=orjson.OPT_PASSTHROUGH_SUBCLASS) if _small_ints(body) else _std(body))
    assert_clear(r)
    if r.status_code == 200:
        answer = r.json()
        assert answer["accepted"] + len(answer["rejected"]) == len(batch)
        for item in answer["rejected"]:
            assert ":" in item["error"]


def _small_ints(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def _std(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()


def test_extreme_bodies(up: Proc) -> None:
    cases: dict[str, bytes] = {
        "invalid utf-8": b'{"events":[{"type":"page","anonymous_id":"\xff\xfe"}]}',
        "NaN literal": b'{"events":[{"type":"page","anonymous_id":"a","timing":{"response_ms":NaN}}]}',
        "1e400": b'{"events":[{"type":"page","anonymous_id":"a","timing":{"response_ms":1e400}}]}',
        "deep nesting": b'{"events":[' + b"[" * 5000 + b"]" * 5000 + b"]}",
        "lone surrogate": b'{"events":[{"type":"page","anonymous_id":"\\ud800"}]}',
        "empty": b"",
        "array": b"[]",
        "truncated": b'{"events":[{"type":',
    }
    for name, content in cases.items():
        r = post(up, content)
        assert_clear(r)
        assert r.status_code in (200, 400), (name, r.status_code, r.text[:200])
    assert httpx.get(f"{up.url}/health").status_code == 200


def test_one_bad_value_costs_one_event_not_the_batch(up: Proc) -> None:
    # A lone surrogate is valid JSON text but cannot be stored as UTF-8: that event alone is refused.
    body = (
        b'{"events":[{"event_id":"sur-1","type":"page","anonymous_id":"sur-dev","name":"\\ud800"},'
        b'{"event_id":"sur-2","type":"page","anonymous_id":"sur-dev","properties":{"n":' + str(2**80).encode() + b"}}]}"
    )
    r = post(up, body)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1 and r.json()["rejected"][0]["index"] == 0
    assert r.json()["rejected"][0]["error"].startswith("event: ")
    journey = journey_with(up, "sur-dev", {"sur-2"})
    assert journey["sessions"][0]["events"][0]["properties"]["n"] == float(2**80)


def test_ten_thousand_events_and_megabyte_strings(up: Proc) -> None:
    batch = [{"type": "track", "name": "Tick", "anonymous_id": f"bulk-{i % 50}"} for i in range(10_000)]
    r = post(up, orjson.dumps({"events": batch}))
    assert r.status_code == 200 and r.json() == {"accepted": 10_000, "rejected": []}
    huge = post(up, orjson.dumps({"events": [{"type": "page", "anonymous_id": "x", "name": "n" * (1 << 20)}]}))
    assert huge.status_code == 413 and "body" in huge.json()["error"]
    long_name = post(up, orjson.dumps({"events": [{"type": "page", "anonymous_id": "x", "name": "n" * 5000}]}))
    assert long_name.status_code == 200 and long_name.json()["rejected"][0]["error"].startswith("name: ")
    assert httpx.get(f"{up.url}/health").status_code == 200


def test_query_bodies_are_json_whatever_the_declared_type(up: Proc) -> None:
    """``curl -d`` declares a form and ``fetch`` with a string ``text/plain``: the query API reads
    the body as JSON either way (FastAPI alone answered a 422 naming no field), and a body that
    is not JSON still gets a 422 naming the body."""
    r = post(up, orjson.dumps({"events": [{"event_id": "ct-1", "type": "page", "anonymous_id": "ct-dev"}]}))
    assert r.status_code == 200, r.text
    journey_with(up, "ct-dev", {"ct-1"})
    body = orjson.dumps({"steps": [{"type": "page"}, "Never Happened"]})
    answers = {}
    for content_type in ("application/json", "application/x-www-form-urlencoded", "text/plain;charset=UTF-8", None):
        headers = {"Authorization": f"Bearer {API_KEY}", **({"Content-Type": content_type} if content_type else {})}
        answer = httpx.post(f"{up.url}/v1/funnels", content=body, headers=headers, timeout=30)
        assert answer.status_code == 200, (content_type, answer.text[:300])
        answers[content_type] = answer.json()
    assert answers["application/json"]["steps"][0]["count"] >= 1
    assert all(a == answers["application/json"] for a in answers.values())
    bad = httpx.post(
        f"{up.url}/v1/funnels",
        content=b"steps=1",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/x-www-form-urlencoded"},
        timeout=30,
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][0] == "body", bad.text
