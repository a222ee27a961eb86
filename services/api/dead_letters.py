"""A person's dead letters: the events of theirs that ingest refused (``rejected_events``).

A refused event is kept 30 days, as sent, so an operator can see what was wrong with it; it still
names its sender. Erasure deletes the person's and export lists them, by the same rule as their
stored events: the dead letter's own ``anonymous_id`` and ``user_id`` (a string or a number, as
ingest takes them), at the time it was received, under the stitching rules (a shared device's
other users' dead letters are not theirs). A payload whose ids are missing or not ids (what was
refused may be exactly that) names nobody and stays until its 30 days are over.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import orjson

from services.core.identity import events_of_person
from services.core.warehouse import Warehouse

from .journeys import Person


def _id_of(field: str) -> str:
    """SQL: the payload's top-level id ``field`` as ingest reads it (a string, or an integer's digits)."""
    return (
        f"multiIf(JSONType(payload, '{field}') = 'String', JSONExtractString(payload, '{field}'), "
        f"JSONType(payload, '{field}') IN ('Int64', 'UInt64'), JSONExtractRaw(payload, '{field}'), '')"
    )


_CANDIDATES: Final = f"""
SELECT anonymous_id, user_id, toUnixTimestamp64Milli(received_at) AS timestamp, batch_index, error, payload
FROM (
    SELECT *, {_id_of("anonymous_id")} AS anonymous_id, {_id_of("user_id")} AS user_id
    FROM rejected_events WHERE project = {{project:String}}
)
WHERE (user_id = {{person:String}} AND user_id != '') OR anonymous_id IN {{devices:Array(String)}}
ORDER BY received_at, batch_index, payload
"""


def dead_letters_of(warehouse: Warehouse, project: str, who: Person) -> list[dict[str, Any]]:
    """The person's stored dead letters, oldest first: ``anonymous_id``, ``user_id``, ``timestamp``
    (when received, ms), ``batch_index``, ``error``, ``payload`` (the text stored)."""
    # A lone id's dead letters may name it as a user id too: one whose every event was refused.
    params = {"project": project, "person": who.person_id, "devices": who.devices}
    candidates = warehouse.rows(_CANDIDATES, params)
    if not who.is_user:
        return candidates
    return [dict(row) for row in events_of_person(who.person_id, candidates, who.links)]


def payload_as_sent(text: str) -> Any:
    """A dead letter's payload: the JSON it was, or the text stored when it was not JSON."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def letter_keys(letters: Sequence[dict[str, Any]]) -> list[tuple[int, int, str]]:
    """What names each dead letter for ``delete_dead_letters``."""
    return [(int(r["timestamp"]), int(r["batch_index"]), str(r["payload"])) for r in letters]
