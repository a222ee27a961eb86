"""The shared ASGI server shell: its start-up leaves the garbage collector tuned."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from services.server import GC_THRESHOLDS, build_app


def test_start_up_freezes_long_lived_objects_and_raises_gc_thresholds() -> None:
    before = gc.get_threshold()
    try:
        with TestClient(build_app([])) as client:
            assert gc.get_threshold() == GC_THRESHOLDS
            assert gc.get_freeze_count() > 10_000  # modules, app and clients are out of the collector's way
            assert client.get("/openapi.json").status_code == 200
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
