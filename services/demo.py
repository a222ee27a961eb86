"""``touchpoint demo``: a day of generated traffic through the real ingest, then an abandonment report.

Runs ``touchpoint up`` on the data directory in a child process, sends seeded
traffic over HTTP, waits until the sessionizer has stored it, and prints what a
newcomer wants to know: where people abandon, how speed relates to buying, and
who left one channel only to buy on another.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from loadtests.generator import GOAL, generate
from loadtests.sender import send
from services.core.settings import Settings, load_projects
from services.testing.kafka_broker import free_port


def _pct(value: float | None) -> str:
    return "  n/a" if value is None else f"{value * 100:5.1f}%"


def _ci(ci: list[float] | tuple[float, float] | None) -> str:
    return "" if not ci else f"(95% CI {ci[0] * 100:.1f}–{ci[1] * 100:.1f}%)"


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(
                "touchpoint up exited; is another Touchpoint using this data directory? "
                "Stop it or set TOUCHPOINT_DATA_DIR to another directory."
            )
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"touchpoint up did not become healthy in {timeout:.0f}s")


def _wait_stored(url: str, timeout: float = 300) -> None:
    streak = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and streak < 3:
        lag = httpx.get(f"{url}/v1/status", timeout=10).json()["sessionizer"]["consumer_lag"]
        streak = streak + 1 if lag == 0 else 0
        time.sleep(0.5)


def report(
    abandonment: dict[str, Any],
    correlation: dict[str, Any],
    people: int,
    events: int,
    errors: dict[str, Any] | None = None,
    waits: dict[str, Any] | None = None,
) -> str:
    lines = [
        "",
        f"Touchpoint demo: {people:,} people, {events:,} events over the last 24 hours",
        "",
        f"Conversion: {abandonment['converted']:,} of {abandonment['journeys']:,} journeys reached "
        f"'{GOAL}' ({_pct(abandonment['conversion_rate']).strip()} {_ci(abandonment['conversion_rate_ci95'])})",
        f"Recovered across channels: {abandonment['recovered_cross_channel']:,} journeys left one channel "
        "and bought on another (not a loss)",
        "",
        "Where people abandon: the last touchpoint before they went quiet",
        f"  {'touchpoint':<24}{'channel':<12}{'left':>6}{'share':>8}{'median ms':>11}{'errors':>8}{'repeats':>9}",
    ]
    for p in abandonment["points"]:
        median = "-" if p["median_response_ms"] is None else f"{p['median_response_ms']:.0f}"
        lines.append(
            f"  {p['touchpoint']:<24}{p['channel']:<12}{p['abandoned']:>6}{_pct(p['share']):>8}{median:>11}"
            f"{_pct(p['error_rate']):>8}{p['avg_repeats']:>9.2f}"
        )
    conv = abandonment["converting"]
    lines += [
        f"  people who bought: median response {conv['median_response_ms'] or 0:.0f} ms, "
        f"error rate {_pct(conv['error_rate']).strip()}",
        "",
        "Conversion after a search page view, by how long the page took",
    ]
    for b in correlation["buckets"]:
        lo, hi = b["range"]
        label = f"{lo:.0f}–{hi:.0f} ms" if hi is not None else f"≥ {lo:.0f} ms"
        rate = _pct(b["conversion_rate"]) if b["enough"] else "  too few"
        lines.append(f"  {label:<16}{rate:>9}  {_ci(b['ci95']) if b['enough'] else ''}  n={b['observations']}")
    odds = correlation.get("odds_ratio_per_second")
    if odds is not None:
        ci = correlation["odds_ratio_per_second_ci95"]
        lines.append(
            f"  Spearman rho {correlation['spearman']:.2f}; each extra second multiplies the odds of buying by "
            f"{odds:.2f} (95% CI {ci[0]:.2f}–{ci[1]:.2f})"
        )
    else:
        lines.append(f"  {correlation.get('note') or 'not enough observations for statistics'}")
    if errors is not None:
        clean = errors["without_errors"]
        lines += [
            "",
            "Errors that cost conversions: journeys each hit, and how many of them bought afterwards",
            f"  {'error':<28}{'hit':>6}{'bought after':>14}{'left on it':>12}",
        ]
        for e in errors["errors"]:
            label = f"{e['kind']}: {e['message']}"[:27]
            lines.append(f"  {label:<28}{e['journeys']:>6}{_pct(e['conversion_rate']):>14}{e['left_with_it']:>12}")
        lines.append(
            f"  journeys no error hit: {clean['journeys']:,}, of which {_pct(clean['conversion_rate']).strip()} bought"
        )
    if waits is not None:
        lines += [
            "",
            "Who waits longest: response times by network, and conversion after a good (<= 1 s) or poor (> 4 s) one",
            f"  {'network':<12}{'timed':>8}{'median ms':>11}{'p75 ms':>9}{'poor':>8}"
            f"{'after good':>12}{'after poor':>12}",
        ]

        def after(rated: dict[str, Any]) -> str:
            return _pct(rated["conversion_rate"]) if rated["enough"] else "too few" if rated["observations"] else "-"

        for g in waits["groups"]:
            good, poor = g["ratings"]["good"], g["ratings"]["poor"]
            lines.append(
                f"  {g['value'] or '(unknown)':<12}{g['observations']:>8}{g['p50']:>11.0f}{g['p75']:>9.0f}"
                f"{_pct(poor['share']):>8}{after(good):>12}{after(poor):>12}"
            )
    return "\n".join(lines) + "\n"


# The generated shop's journey map: stages by touchpoint name (web pages and app screens alike).
SHOP_STAGES = (
    ("awareness", ("Home",)),
    ("consideration", ("Search", "Product", "Product Added")),
    ("purchase", ("Cart", "Checkout", GOAL)),
)


def configure_for_the_shop(path: Path) -> None:
    """A projects file the demo just created: the shop's goal (abandonment signals) and stages
    (the journey map), so the console and the API have them. A file that existed is left alone."""
    text = path.read_text()
    text = text.replace("goals = []\n", f'goals = ["{GOAL}"]\n', 1)
    for name, touchpoints in SHOP_STAGES:
        names = ", ".join(f'"{t}"' for t in touchpoints)
        text += f'\n[[projects.stages]]\nname = "{name}"\ntouchpoints = [{names}]\n'
    path.write_text(text)


def main(people: int = 3000, seed: int = 42) -> int:
    settings = Settings.from_env()
    projects, path, created = load_projects(settings)
    if created:
        configure_for_the_shop(path)
        projects, _, _ = load_projects(settings)
    project = projects.items[0]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "TOUCHPOINT_PORT": str(port),
        "TOUCHPOINT_HOST": "127.0.0.1",
        "TOUCHPOINT_BATCH_MAX_SECONDS": "0.5",
    }
    print(f"Starting Touchpoint on {url} (data in {settings.data_dir}) ...", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_healthy(url, proc)
        now = int(time.time() * 1000)
        traffic = generate(seed, people, now - 24 * 3600_000, now)
        print(
            f"Sending {len(traffic.batches):,} batches ({traffic.unique_events:,} events) through /v1/batch ...",
            flush=True,
        )
        result = asyncio.run(send(url, project.write_keys[0], traffic.batches, concurrency=16))
        if result.errors:
            print(f"warning: {result.errors} batches were not accepted: {result.statuses}", file=sys.stderr)
        print("Waiting for the sessionizer to store everything ...", flush=True)
        _wait_stored(url)
        headers = {"Authorization": f"Bearer {project.api_keys[0]}"}
        abandonment = httpx.post(
            f"{url}/v1/abandonment", json={"goal": GOAL, "limit": 8}, headers=headers, timeout=120
        ).json()
        correlation = httpx.post(
            f"{url}/v1/correlations",
            json={"metric": "response_ms", "touchpoint": {"type": "page", "path": "/search"}, "goal": GOAL},
            headers=headers,
            timeout=120,
        ).json()
        errors = httpx.post(f"{url}/v1/errors", json={"goal": GOAL, "limit": 5}, headers=headers, timeout=120).json()
        waits = httpx.post(
            f"{url}/v1/performance", json={"goal": GOAL, "by": "network"}, headers=headers, timeout=120
        ).json()
        print(report(abandonment, correlation, people, traffic.unique_events, errors, waits))
        base = f"http://{settings.host}:{settings.port}"
        print("Explore: touchpoint up, then open the console (the key stays in that browser tab)")
        print(f"  {base}/#key={project.api_keys[0]}&goal={quote(GOAL)}")
        print("or ask the API")
        print(
            f"  curl -s {base}/v1/abandonment "
            f"-H 'Authorization: Bearer {project.api_keys[0]}' -d '{{\"goal\": \"{GOAL}\"}}'"
        )
    finally:
        proc.terminate()
        proc.wait(60)
    return 0
