"""``make soak``: steady load for a while (default 10 minutes); RSS and latency must stay flat.

Not part of CI. Starts ``touchpoint up`` on the embedded default (or on a real
Kafka broker with ``--kafka``), sends generated traffic at a fixed rate, and
samples the process's RSS and the request latency every ``--every`` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from loadtests.bench import peak_rss_mb, pid_of
from loadtests.generator import generate
from loadtests.sender import percentile
from services.testing import kafka_broker
from tests.harness import WRITE_KEY, new_proc


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def run(url: str, pid: int, seconds: float, rate: float, every: float) -> list[dict[str, Any]]:
    now = int(time.time() * 1000)
    batches = generate(77, 200_000, now - 20 * 3600_000, now).batches
    samples: list[dict[str, Any]] = []
    window: list[float] = []
    statuses: dict[int, int] = {}
    started = time.monotonic()
    sent = 0
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> None:
            body = orjson.dumps(batches[i % len(batches)].body(int(time.time() * 1000)))
            t = time.perf_counter()
            r = await client.post(f"{url}/v1/batch", content=body, headers={"X-Write-Key": WRITE_KEY})
            window.append(time.perf_counter() - t)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        next_sample = started + every
        tasks: set[asyncio.Task[None]] = set()
        while time.monotonic() - started < seconds:
            target = started + sent / rate
            await asyncio.sleep(max(0.0, target - time.monotonic()))
            task = asyncio.create_task(one(sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
            if time.monotonic() >= next_sample:
                sample = {
                    "t_s": round(time.monotonic() - started),
                    "rss_mb": rss_mb(pid),
                    "p50_ms": round(percentile(window, 50) * 1000, 2),
                    "p99_ms": round(percentile(window, 99) * 1000, 2),
                    "requests": len(window),
                    "statuses": dict(statuses),
                }
                samples.append(sample)
                print(f"[soak] {sample}", file=sys.stderr, flush=True)
                window.clear()
                next_sample += every
        await asyncio.gather(*tasks)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=100, help="batches per second")
    parser.add_argument("--every", type=float, default=30, help="seconds between samples")
    parser.add_argument("--kafka", action="store_true", help="run on a real Kafka broker instead of the embedded log")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="touchpoint-soak-"))
    broker = kafka_broker.start() if args.kafka else None
    env = {"TOUCHPOINT_KAFKA_BOOTSTRAP": broker.bootstrap} if broker else {}
    proc = new_proc("up", workdir, **env).start()
    try:
        samples = asyncio.run(run(proc.url, pid_of(proc), args.minutes * 60, args.rate, args.every))
        peak = peak_rss_mb(pid_of(proc))
    finally:
        proc.stop()
        if broker:
            broker.stop()
    steady = samples[len(samples) // 5 :] or samples  # after warm-up
    result = {
        "command": f"make soak (minutes={args.minutes}, rate={args.rate}/s, kafka={args.kafka})",
        "samples": samples,
        "peak_rss_mb": peak,
        "rss_growth_mb_after_warmup": round(steady[-1]["rss_mb"] - steady[0]["rss_mb"], 1),
        "p99_ms_first_last": [steady[0]["p99_ms"], steady[-1]["p99_ms"]],
    }
    print(orjson.dumps(result, option=orjson.OPT_NON_STR_KEYS).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
