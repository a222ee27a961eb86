"""Fixtures for real services. Under CI=true a missing service fails the run, never skips it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.testing import kafka_broker

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"CI=true and a required service is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def start_broker() -> kafka_broker.Broker:
    """A new real broker, or a failure (CI) / skip (elsewhere) that says why there is none."""
    try:
        return kafka_broker.start()
    except kafka_broker.BrokerError as exc:
        unavailable(f"cannot start the Kafka broker: {exc}")
        raise


@pytest.fixture(scope="session")
def kafka() -> Iterator[kafka_broker.Broker | str]:
    """A real Kafka broker: TOUCHPOINT_TEST_KAFKA_BOOTSTRAP if set, else one started here."""
    external = os.environ.get("TOUCHPOINT_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = start_broker()
    try:
        yield broker
    finally:
        broker.stop()


def bootstrap_of(kafka: kafka_broker.Broker | str) -> str:
    return kafka if isinstance(kafka, str) else kafka.bootstrap


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """chDB hosts one engine path per process: every in-process test shares this one."""
    return tmp_path_factory.mktemp("chdb") / "clickhouse"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests.harness import kill_leftovers

    if kill_leftovers():
        print("\n[tests] killed service processes a failed test left running")
