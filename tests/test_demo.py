"""``touchpoint demo`` fills the embedded default through the real ingest and prints a report."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from loadtests.generator import generate
from services.core.settings import Settings, load_projects


def test_demo_prints_an_abandonment_report(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHPOINT_")}
    env["TOUCHPOINT_DATA_DIR"] = str(tmp_path / "data")
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "demo", "--people", "300", "--seed", "3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout
    now = int(time.time() * 1000)
    truth = generate(3, 300, now - 24 * 3600_000, now).truths
    converted = sum(t.converted for t in truth)
    assert f"Conversion: {converted:,} of 300 journeys reached 'Order Completed'" in text
    assert f"Recovered across channels: {sum(t.recovered_cross_channel for t in truth)} journeys" in text
    assert "Where people abandon" in text and "page /search" in text
    assert re.search(r"0–500 ms\s+(\d+\.\d%|too few)", text)
    assert "Errors that cost conversions" in text
    assert re.search(r"js: Search failed\s+\d+\s+\d+\.\d%\s+\d+\n", text)  # the generator's web search errors
    assert re.search(r"journeys no error hit: [\d,]+, of which \d+\.\d% bought", text)
    waits = re.search(r"Who waits longest.*\n.*\n((?:  \S.*\n)+)", text)
    assert waits, text
    networks = [line.split()[0] for line in waits.group(1).splitlines()]
    assert sorted(networks) == ["3g", "4g", "wifi"] and networks[0] == "3g"  # the generator's 3g is 4x slower
    assert "Authorization: Bearer ak_" in text  # how to explore further
    assert re.search(r"http://127.0.0.1:\d+/#key=ak_\S+&goal=Order%20Completed\n", text)  # the console
    assert (tmp_path / "data" / "projects.toml").exists()
    # The project it created knows the shop: its goal and the journey map's stages.
    projects, _, created = load_projects(Settings.from_env({"TOUCHPOINT_DATA_DIR": str(tmp_path / "data")}))
    assert not created and projects.items[0].goals == ("Order Completed",)
    assert [s.name for s in projects.items[0].stages] == ["awareness", "consideration", "purchase"]
