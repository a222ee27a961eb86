"""The identity links as stored: the one query every reader of ``identity_links`` uses.

``identity_links`` is an ``AggregatingMergeTree``: until a merge, one (device, user) pair may
have several rows, so a reader must group them. The journeys, the sessionizer's recompute from
storage and its erasure sweep each read links of some devices or users; they share this
function so that the grouping (and the times as ms) are written once.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.core.identity import Link
from services.core.warehouse import Warehouse


def stored_links(
    warehouse: Warehouse, project: str, *, devices: Sequence[str] = (), users: Sequence[str] = ()
) -> list[Link]:
    """Every stored link of ``project`` whose anonymous id is one of ``devices`` or whose user
    id is one of ``users``, one per (device, user) pair with its first and last time seen."""
    if not devices and not users:
        return []
    rows = warehouse.rows(
        "SELECT anonymous_id, user_id, toUnixTimestamp64Milli(min(first_seen)) AS first_seen, "
        "toUnixTimestamp64Milli(max(last_seen)) AS last_seen FROM identity_links "
        "WHERE project = {project:String} "
        "AND (anonymous_id IN {devices:Array(String)} OR user_id IN {users:Array(String)}) "
        "GROUP BY anonymous_id, user_id",
        {"project": project, "devices": list(devices), "users": list(users)},
    )
    return [Link(str(r["anonymous_id"]), str(r["user_id"]), int(r["first_seen"]), int(r["last_seen"])) for r in rows]
