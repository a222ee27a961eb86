"""Generate realistic traffic and send it to a running Touchpoint.

    python -m loadtests --url http://127.0.0.1:8080 --write-key wk_... --people 5000 \\
        [--rate 200] [--seed 1] [--truth truth.json]

``--rate`` is batches per second (default: as fast as possible). ``--truth`` writes
what really happened (who converted, where each journey stopped, every event id
and the HTTP answer it got) for tests and comparisons.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
import time
from pathlib import Path

import orjson

from .generator import generate
from .sender import send, summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--write-key", required=True)
    parser.add_argument("--people", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--hours", type=float, default=24, help="journeys start within the last N hours")
    parser.add_argument("--rate", type=float, default=None, help="batches per second; default: as fast as possible")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--truth", type=Path, default=None, help="write the ground truth here (JSON)")
    args = parser.parse_args(argv)
    now = int(time.time() * 1000)
    traffic = generate(args.seed, args.people, now - int(args.hours * 3600_000), now)
    print(
        f"{len(traffic.batches):,} batches, {traffic.unique_events:,} unique events, {args.people:,} people",
        file=sys.stderr,
    )
    result = asyncio.run(send(args.url, args.write_key, traffic.batches, args.concurrency, args.rate))
    print(orjson.dumps(summary(result)).decode())
    if args.truth:
        args.truth.write_bytes(
            orjson.dumps(
                {
                    "people": [dataclasses.asdict(t) for t in traffic.truths],
                    "accepted_event_ids": sorted(result.accepted_ids),
                    "refused_event_ids": sorted(result.refused_ids),
                    "unknown_event_ids": sorted(result.unknown_ids),
                }
            )
        )
    return 0 if not result.errors else 1


if __name__ == "__main__":
    sys.exit(main())
