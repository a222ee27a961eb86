"""Steps (touchpoints, goals) as bound SQL conditions: user values never enter SQL text."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException

STEP_FIELDS = ("type", "name", "path", "channel")


def step_condition(step: Any, prefix: str, params: dict[str, Any], field: str) -> str:
    """``{"type": "page", "path": "/cart"}`` (or a plain name) as a condition with bound parameters."""
    if isinstance(step, str):
        step = {"name": step}
    if not isinstance(step, dict) or not step:
        raise HTTPException(422, f"{field}: a step is a name or an object with type, name, path or channel")
    unknown = set(step) - set(STEP_FIELDS)
    if unknown:
        raise HTTPException(422, f"{field}: unknown key(s) {sorted(unknown)}; use {', '.join(STEP_FIELDS)}")
    parts = []
    for key in STEP_FIELDS:
        if key in step:
            value = step[key]
            if not isinstance(value, str):
                raise HTTPException(422, f"{field}.{key}: must be a string")
            name = f"{prefix}_{key}"
            params[name] = value
            parts.append(f"{key} = {{{name}:String}}")
    return "(" + " AND ".join(parts) + ")"


def step_label(step: Any) -> str:
    if isinstance(step, str):
        return step
    return " ".join(str(step[k]) for k in STEP_FIELDS if k in step)
