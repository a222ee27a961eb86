"""The traffic generator: seeded, realistic, with ground truth; and its command line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson

from loadtests.generator import generate
from tests.harness import WRITE_KEY, new_proc


def test_same_seed_same_traffic_and_realistic_shape() -> None:
    now = int(time.time() * 1000)
    a = generate(5, 400, now - 86_400_000, now)
    b = generate(5, 400, now - 86_400_000, now)
    assert [x.events for x in a.batches] == [x.events for x in b.batches]
    channels = {e["channel"] for x in a.batches for e in x.events}
    assert channels == {"web", "mobile_web", "app"}
    assert any(x.duplicate for x in a.batches), "retries (duplicates) are part of real traffic"
    assert any(x.clock_skew_ms for x in a.batches), "app clocks are skewed"

    def last_event_ms(batch: object) -> int:
        from services.core.events import parse_time_ms

        return max(parse_time_ms(e["timestamp"], "timestamp") for e in batch.events) - (batch.clock_skew_ms or 0)  # type: ignore[attr-defined]

    late = [x for x in a.batches if x.clock_skew_ms is not None and x.arrival_ms - last_event_ms(x) > 3_600_000]
    assert late, "some app batches arrive hours late from offline queues"
    assert any(t.recovered_cross_channel for t in a.truths)
    assert any(len(t.devices) == 2 for t in a.truths), "some people use two devices"
    converted = sum(t.converted for t in a.truths) / len(a.truths)
    assert 0.05 < converted < 0.5
    for truth in a.truths:
        assert truth.converted or truth.last_touchpoint


def test_command_line_sends_and_writes_the_truth(tmp_path: Path) -> None:
    proc = new_proc("up", tmp_path / "gen").start()
    try:
        truth_file = tmp_path / "truth.json"
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "loadtests",
                "--url",
                proc.url,
                "--write-key",
                WRITE_KEY,
                "--people",
                "50",
                "--rate",
                "200",
                "--truth",
                str(truth_file),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, out.stderr
        assert "sent" in out.stderr  # progress
        summary = orjson.loads(out.stdout.splitlines()[-1])
        assert set(summary["statuses"]) == {"200"}
        truth = orjson.loads(truth_file.read_bytes())
        assert len(truth["people"]) == 50
        ids = {i for p in truth["people"] for i in p["event_ids"]}
        assert set(truth["accepted_event_ids"]) == ids and not truth["refused_event_ids"]
    finally:
        proc.stop()
