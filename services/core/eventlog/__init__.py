"""The event log between ingest and the sessionizer: Kafka, or embedded on disk."""

from __future__ import annotations

from ..settings import Settings
from .base import LogOutcomeUnknown, LogReader, LogRecord, LogUnavailable, LogWriter
from .embedded import EmbeddedLog, EmbeddedLogReader

__all__ = [
    "EmbeddedLog",
    "EmbeddedLogReader",
    "LogOutcomeUnknown",
    "LogReader",
    "LogRecord",
    "LogUnavailable",
    "LogWriter",
    "open_reader",
    "open_writer",
]


def open_writer(settings: Settings, embedded: EmbeddedLog | None = None) -> LogWriter:
    """Kafka when TOUCHPOINT_KAFKA_BOOTSTRAP is set, else the embedded log."""
    if settings.kafka_bootstrap:
        from .kafka import KafkaLogWriter

        return KafkaLogWriter(
            settings.kafka_bootstrap,
            settings.kafka_topic,
            settings.kafka_partitions,
            settings.produce_timeout_s,
            transactional_id=settings.ingest_id,
            dead_letter_topic=settings.kafka_dead_letter_topic,
            producers=settings.kafka_producers,
            compression=settings.kafka_compression,
        )
    if embedded is None:
        raise ValueError("the embedded log runs inside `touchpoint up`; set TOUCHPOINT_KAFKA_BOOTSTRAP")
    return embedded


def open_reader(settings: Settings, embedded: EmbeddedLog | None = None) -> LogReader:
    if settings.kafka_bootstrap:
        from .kafka import KafkaLogReader

        return KafkaLogReader(
            settings.kafka_bootstrap, settings.kafka_topic, settings.kafka_group, settings.kafka_dead_letter_topic
        )
    if embedded is None:
        raise ValueError("the embedded log runs inside `touchpoint up`; set TOUCHPOINT_KAFKA_BOOTSTRAP")
    return embedded.reader(settings.kafka_group)
