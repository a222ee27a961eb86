"""The ``touchpoint`` command: ``up`` (everything, one process), ``ingest``, ``sessionizer``, ``api``."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from services.core import logs
from services.core.eventlog import EmbeddedLog, open_reader, open_writer
from services.core.settings import ConfigError, Projects, Settings, load_projects
from services.core.warehouse import Warehouse, WarehouseError
from services.server import Component, build_app

log = logging.getLogger("touchpoint")


def _banner(settings: Settings, projects: Projects, source: str, created: bool) -> None:
    url = f"http://{settings.host}:{settings.port}"
    lines = [
        "",
        f"Touchpoint is starting on {url}",
        f"  data directory : {settings.data_dir}",
        f"  event log      : {settings.kafka_bootstrap or 'embedded, ' + str(settings.embedded_log_dir)}",
        f"  ClickHouse     : {settings.clickhouse_url.split('@')[-1]}",
        f"  projects       : {source}{' (created now)' if created else ''}",
    ]
    for project in projects.items:
        lines += [
            f"  project {project.id!r}: write key {project.write_keys[0]}  api key {project.api_keys[0]}",
            (
                f"    goals {', '.join(project.goals)}: sessions that time out without one are abandonment signals"
                if project.goals
                else f'    no goals: set `goals` (e.g. ["Order Completed"]) in {source} for abandonment signals'
            ),
        ]
    first = projects.items[0]
    lines += [
        "",
        "Send an event:",
        f"  curl -s {url}/v1/batch -H 'X-Write-Key: {first.write_keys[0]}' \\",
        """    -d '{"events":[{"type":"page","name":"Home","anonymous_id":"a1","context":{"page":{"path":"/"}}}]}'""",
        "Read the journey back:",
        f"  curl -s {url}/v1/journeys/a1 -H 'Authorization: Bearer {first.api_keys[0]}'",
        "Or open the console in a browser (the key stays in that tab):",
        f"  {url}/#key={first.api_keys[0]}",
        "",
    ]
    print("\n".join(lines), flush=True)


def _components(command: str, settings: Settings, projects: Projects) -> list[tuple[str, Component]]:
    from services.api.app import QueryApi
    from services.ingest.app import Ingest
    from services.sessionizer.service import Sessionizer

    embedded = None
    if command == "up" and not settings.kafka_bootstrap:
        embedded = EmbeddedLog(settings.embedded_log_dir)
    elif not settings.kafka_bootstrap and command in ("ingest", "sessionizer"):
        raise ConfigError(
            f"`touchpoint {command}` runs against Kafka: set TOUCHPOINT_KAFKA_BOOTSTRAP=host:9092, "
            "or run `touchpoint up` for the single-process embedded mode"
        )
    out: list[tuple[str, Component]] = []
    if command in ("up", "ingest"):
        out.append(("ingest", Ingest(settings, projects, open_writer(settings, embedded))))
    if command in ("up", "sessionizer"):
        out.append(
            (
                "sessionizer",
                Sessionizer(
                    settings,
                    open_reader(settings, embedded),
                    Warehouse(settings.clickhouse_url, "sessionizer"),
                    projects,
                ),
            )
        )
    if command in ("up", "api"):
        limits = {"max_execution_time": settings.query_timeout_s, "max_rows_to_read": settings.query_max_rows}
        out.append(("api", QueryApi(projects, Warehouse(settings.clickhouse_url, "api", query_settings=limits))))
    return out


def _query_target(project_id: str | None, path: str) -> tuple[str, dict[str, str]] | None:
    """The URL of a running Touchpoint's query API (TOUCHPOINT_HOST/PORT) and the project's key."""
    settings = Settings.from_env()
    projects, _, _ = load_projects(settings)
    project = projects.get(project_id) if project_id else projects.items[0]
    if project is None:
        print(f"touchpoint: no project {project_id!r} in the projects file", file=sys.stderr)
        return None
    return f"http://{settings.host}:{settings.port}{path}", {"Authorization": f"Bearer {project.api_keys[0]}"}


def _unreachable(url: str, exc: Exception, serving: str = "`touchpoint up` or `touchpoint api`") -> int:
    print(f"touchpoint: cannot reach {url} ({exc}); is {serving} running?", file=sys.stderr)
    return 1


def _call_api(project_id: str | None, method: str, path: str, **kwargs: Any) -> Any:
    """One request to a running Touchpoint's query API: the 200 answer, or the exit code after
    saying what went wrong."""
    import httpx

    target = _query_target(project_id, path)
    if target is None:
        return 2
    url, headers = target
    try:
        r = httpx.request(method, url, headers=headers, **kwargs)
    except httpx.HTTPError as exc:
        return _unreachable(url, exc)
    if r.status_code != 200:
        print(f"touchpoint: {url} answered {r.status_code}: {r.text[:300]}", file=sys.stderr)
        return 1
    return r


def _list_rejected(project_id: str | None, limit: int) -> int:
    """Print dead letters from a running Touchpoint, one JSON line each."""
    import orjson

    r = _call_api(project_id, "GET", "/v1/rejected", params={"limit": limit})
    if isinstance(r, int):
        return r
    for item in r.json()["rejected"]:
        print(orjson.dumps(item).decode())
    return 0


def _follow_abandonments(project_id: str | None, since: str | None) -> int:
    """Print abandonment signals as they happen, one JSON line each, until Ctrl-C."""
    import httpx

    target = _query_target(project_id, "/v1/abandonments/stream")
    if target is None:
        return 2
    url, headers = target
    params = {"since": since} if since else {}
    try:
        with httpx.stream("GET", url, params=params, headers=headers, timeout=httpx.Timeout(10, read=None)) as r:
            if r.status_code != 200:
                r.read()
                print(f"touchpoint: {url} answered {r.status_code}: {r.text[:300]}", file=sys.stderr)
                return 1
            for line in r.iter_lines():
                if line.startswith("data: "):
                    print(line[6:], flush=True)
    except httpx.HTTPError as exc:
        return _unreachable(url, exc)
    except KeyboardInterrupt:
        return 130
    return 0


def _rebuild_sessions(project_id: str | None, chunk: int = 2000) -> int:
    """Recompute the sessions table from stored events (after upgrading from a version without it).
    Stop `touchpoint up` first: chDB opens one engine path per process."""
    from services.sessionizer.open_sessions import OpenSessions

    try:
        settings = Settings.from_env()
        projects, _, _ = load_projects(settings)
        warehouse = Warehouse(settings.clickhouse_url, "rebuild-sessions")
        warehouse.migrate()
    except (ConfigError, WarehouseError, ValueError) as exc:
        print(f"touchpoint: {exc}", file=sys.stderr)
        return 2
    sessions = OpenSessions(warehouse, projects)
    for project in projects.items:
        if project_id and project.id != project_id:
            continue
        devices = [
            r["device"]
            for r in warehouse.rows(
                "SELECT DISTINCT if(anonymous_id = '', concat('user:', user_id), anonymous_id) AS device "
                "FROM events WHERE project = {p:String} ORDER BY device",
                {"p": project.id},
            )
        ]
        written = 0
        for start in range(0, len(devices), chunk):
            written += sessions.rebuild(project.id, devices[start : start + chunk])
            done = min(start + chunk, len(devices))
            print(f"touchpoint: {project.id}: {done}/{len(devices)} devices, {written} session rows", file=sys.stderr)
        print(f"touchpoint: {project.id}: sessions rebuilt for {len(devices)} devices", file=sys.stderr)
    warehouse.close()
    return 0


def _erase(project_id: str | None, identifier: str | None) -> int:
    """Erase a person through a running Touchpoint (DELETE /v1/persons/{id}); print what went."""
    from urllib.parse import quote

    if not identifier:
        print("touchpoint: erase needs the person's user id or anonymous id: touchpoint erase ID", file=sys.stderr)
        return 2
    r = _call_api(project_id, "DELETE", f"/v1/persons/{quote(identifier, safe='')}", timeout=300)
    if isinstance(r, int):
        return r
    print(r.text)
    return 0


def describe_status(status: dict[str, Any]) -> tuple[list[str], bool]:
    """``GET /v1/status`` in words, one line per component, and whether all is well (read, and
    the last write did not fail)."""
    lines, healthy = [], True
    for name, s in sorted(status.items()):
        lag, delay, error = s.get("consumer_lag"), s.get("ingestion_delay_seconds"), s.get("last_error")
        if lag == 0:
            state = "up to date: every accepted event is stored"
        elif lag is None:
            state = "lag unknown (not yet assigned a partition)"
        else:
            behind = "" if delay is None else f", the newest stored event was received {delay:,.1f} s ago"
            state = f"behind: consumer lag {lag:,} (Kafka records, or bytes of the embedded log){behind}"
        since = s.get("seconds_since_last_write")
        written = "no write yet" if since is None else f"last write {since:,.1f} s ago"
        line = f"{name}: {state}; {s.get('events_written', 0):,} events written since start, {written}"
        if error:
            healthy = False
            line += f"; last error: {error} (check TOUCHPOINT_CLICKHOUSE_URL; events wait in the log)"
        lines.append(line)
    if not lines:
        lines.append("no sessionizer in this process: ask the one running `touchpoint sessionizer`")
    return lines, healthy


def _status(project_id: str | None) -> int:
    """Where is my data: a running Touchpoint's /v1/status in words; exit 1 when a write failed."""
    r = _call_api(project_id, "GET", "/v1/status", timeout=30)
    if isinstance(r, int):
        return r
    lines, healthy = describe_status(r.json())
    for line in lines:
        print(f"touchpoint: {line}")
    return 0 if healthy else 1


def _export(project_id: str | None, identifier: str | None) -> int:
    """Write everything stored about a person to stdout, one JSON line each, from a running
    Touchpoint (GET /v1/persons/{id}/export); say on stderr how much, or that it was cut short."""
    from urllib.parse import quote

    import httpx
    import orjson

    if not identifier:
        print("touchpoint: export needs the person's user id or anonymous id: touchpoint export ID", file=sys.stderr)
        return 2
    target = _query_target(project_id, f"/v1/persons/{quote(identifier, safe='')}/export")
    if target is None:
        return 2
    url, headers = target
    last = b""
    try:
        with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(60, read=300)) as r:
            if r.status_code != 200:
                print(f"touchpoint: {url} answered {r.status_code}: {r.read().decode()[:300]}", file=sys.stderr)
                return 1
            for line in r.iter_lines():
                sys.stdout.write(line + "\n")
                last = line.encode()
    except httpx.HTTPError as exc:
        return _unreachable(url, exc)
    sys.stdout.flush()
    end = orjson.loads(last) if last.startswith(b'{"kind":"end"') else None
    if end is None:
        print("touchpoint: the export was cut short (no end line): run it again", file=sys.stderr)
        return 1
    labels = {"events": "events", "sessions": "sessions", "identity_links": "identity links"}
    labels.update(abandonments="abandonments", rejected="refused events")
    counts = ", ".join(f"{end.get(k, 0)} {label}" for k, label in labels.items())
    print(f"touchpoint: exported {identifier}: {counts}", file=sys.stderr)
    return 0


def _import(project_id: str | None, path: str | None) -> int:
    """Send a file of events (Touchpoint, Segment or ``touchpoint export`` lines) through a
    running Touchpoint's ingest; progress and a summary on stderr."""
    from services.importer import ImportFailed, ImportResult, import_lines, read

    if not path:
        print("touchpoint: import needs a file: touchpoint import events.ndjson[.gz] (or - for stdin)", file=sys.stderr)
        return 2
    settings = Settings.from_env()
    projects, _, _ = load_projects(settings)
    project = projects.get(project_id) if project_id else projects.items[0]
    if project is None:
        print(f"touchpoint: no project {project_id!r} in the projects file", file=sys.stderr)
        return 2
    url = f"http://{settings.host}:{settings.port}/v1/batch"
    import httpx

    try:  # before reading the file: a Touchpoint that is not running is said at once, not after retries
        httpx.get(f"http://{settings.host}:{settings.port}/health", timeout=5)
    except httpx.HTTPError as exc:
        return _unreachable(url, exc, "`touchpoint up` or `touchpoint ingest`")

    def progress(result: ImportResult, seconds: float) -> None:
        print(
            f"touchpoint: import: {result.lines:,} lines, {result.accepted:,} accepted, {result.refused:,} refused "
            f"({result.lines / seconds:,.0f} lines/s)",
            file=sys.stderr,
        )

    try:
        result = import_lines(read(path), url, project.write_keys[0], settings.allowed_lateness_s * 1000, progress)
    except FileNotFoundError:
        print(f"touchpoint: import: no file {path}", file=sys.stderr)
        return 2
    except ImportFailed as exc:
        print(f"touchpoint: import stopped: {exc}", file=sys.stderr)
        return 1
    for problem in result.problems:
        print(f"touchpoint: refused {problem}", file=sys.stderr)
    print(
        f"touchpoint: imported {path} into {project.id}: {result.accepted:,} events accepted, "
        f"{result.refused:,} refused, {result.skipped:,} lines skipped",
        file=sys.stderr,
    )
    if result.late:
        print(
            f"touchpoint: {result.late:,} events are older than the allowed lateness "
            f"({settings.allowed_lateness_s // 86400} days): stored and flagged late; sessions leave them out until "
            "`touchpoint rebuild-sessions` (stop Touchpoint first)",
            file=sys.stderr,
        )
    return 0 if result.refused == 0 else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="touchpoint", description="Self-hosted customer-journey tracking.")
    parser.add_argument(
        "command",
        choices=[
            "up",
            "ingest",
            "sessionizer",
            "api",
            "demo",
            "rejected",
            "abandonments",
            "rebuild-sessions",
            "erase",
            "export",
            "status",
            "import",
        ],
        help="up: everything in one process; ingest, sessionizer, api: one service against Kafka; "
        "demo: fill the data directory with a day of generated traffic and print an abandonment report; "
        "rejected: list dead letters; abandonments: follow sessions that time out without a goal, as they "
        "happen; rebuild-sessions: recompute the sessions table from stored events; "
        "erase ID: delete everything stored about a person (user id or anonymous id); "
        "export ID: print everything stored about a person, one JSON line each (right of access); "
        "status: where is my data (consumer lag, ingestion delay, last write and error); "
        "import FILE: send a file of events (Touchpoint, Segment or `touchpoint export` lines, one JSON each, "
        "gzip or not) through a running Touchpoint, each stored once however often it is imported",
    )
    parser.add_argument(
        "identifier",
        nargs="?",
        default=None,
        help="erase, export: the person's user id or anonymous id; import: the file (- for stdin)",
    )
    parser.add_argument("--people", type=int, default=3000, help="demo: how many people to simulate")
    parser.add_argument("--seed", type=int, default=42, help="demo: random seed")
    parser.add_argument(
        "--project",
        default=None,
        help="rejected, abandonments, erase, export, import: project id (default: the first); "
        "rebuild-sessions: only this project",
    )
    parser.add_argument("--since", default=None, help="abandonments: ISO 8601, also those noticed since (default: now)")
    parser.add_argument("--limit", type=int, default=20, help="rejected: how many, newest first")
    args = parser.parse_args(argv)
    if args.command == "rejected":
        return _list_rejected(args.project, args.limit)
    if args.command == "abandonments":
        return _follow_abandonments(args.project, args.since)
    if args.command == "erase":
        return _erase(args.project, args.identifier)
    if args.command == "export":
        return _export(args.project, args.identifier)
    if args.command == "status":
        return _status(args.project)
    if args.command == "import":
        return _import(args.project, args.identifier)
    if args.command == "rebuild-sessions":
        return _rebuild_sessions(args.project)
    if args.command == "demo":
        from services.demo import main as demo

        return demo(args.people, args.seed)
    try:
        settings = Settings.from_env()
        logs.configure(settings.log_level)
        projects, source, created = load_projects(settings)
        components = _components(args.command, settings, projects)
    except (ConfigError, WarehouseError, ValueError) as exc:
        print(f"touchpoint: {exc}", file=sys.stderr)
        return 2
    if args.command == "up":
        _banner(settings, projects, str(source), created)
    if args.command == "ingest" and settings.ingest_workers > 1:
        from services.workers import supervise

        return supervise(settings, settings.ingest_workers)
    server = uvicorn.Server(_uvicorn_config(build_app(components), settings))
    # uvicorn drains on SIGTERM, then raises the signal again with the handler it found: ours
    # turns that into a clean exit (0), where the default handler would end with "killed by
    # SIGTERM" (-15, exit status 143 in a shell) after a shutdown that went as asked.
    signal.signal(signal.SIGTERM, _terminated)
    try:
        server.run()
    except KeyboardInterrupt:
        # uvicorn shut everything down cleanly, then re-raised Ctrl-C: end quietly.
        return 130
    except _Terminated:
        return 0
    return 0


class _Terminated(Exception):
    """SIGTERM, raised again by uvicorn once it has shut down."""


def _terminated(signum: int, frame: object) -> None:
    raise _Terminated


def _uvicorn_config(app: Any, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=30,
    )


def serve_on(index: int, sock: socket.socket) -> None:
    """One ingest worker process (see services.workers): its own producers, the shared socket."""
    from services.workers import worker_settings

    settings = worker_settings(Settings.from_env(), index)
    logs.configure(settings.log_level)
    projects, _, _ = load_projects(settings)
    app = build_app(_components("ingest", settings, projects))
    uvicorn.Server(_uvicorn_config(app, settings)).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
