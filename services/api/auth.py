"""Bearer API keys: a key sees its own project only; write keys cannot read."""

from __future__ import annotations

from fastapi import HTTPException, Request

from services.core.settings import Project, Projects


def project_for(request: Request, projects: Projects) -> Project:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401, "authorization: send 'Authorization: Bearer <api key>'", headers={"WWW-Authenticate": "Bearer"}
        )
    project = projects.by_api_key.get(token.strip())
    if project is None:
        raise HTTPException(401, "authorization: unknown API key", headers={"WWW-Authenticate": "Bearer"})
    return project
