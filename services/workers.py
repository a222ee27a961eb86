"""Several ingest worker processes on one port: `touchpoint ingest` with TOUCHPOINT_INGEST_WORKERS > 1.

Why processes: validating events is Python work bound to one core by the GIL; a
second process uses the second core. The parent binds one socket per worker
on the same port (SO_REUSEPORT: the kernel spreads connections over them),
restarts a worker that dies, and stops them all on SIGTERM or Ctrl-C.

Each worker gets a stable index, and with it stable Kafka transactional ids
(``<ingest id>-w<index>-<producer>``): a restarted worker fences the
transactions its predecessor left open instead of waiting for the broker's
transaction timeout. Prometheus metrics are shared through
PROMETHEUS_MULTIPROC_DIR, so `/metrics` on any worker counts them all.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import replace
from multiprocessing.process import BaseProcess
from types import FrameType

from services.core.settings import Settings

log = logging.getLogger("touchpoint.workers")

RESPAWN_PAUSE_S = 1.0
STOP_GRACE_S = 35.0  # uvicorn's graceful shutdown is 30 s


def bind(settings: Settings) -> socket.socket:
    """One worker's listening socket. SO_REUSEPORT: the kernel spreads new connections evenly
    over the workers' sockets (one shared socket lets whichever worker wakes first take most)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, settings.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def worker_settings(settings: Settings, index: int) -> Settings:
    return replace(settings, ingest_id=f"{settings.ingest_id}-w{index}")


def _run_worker(index: int, sock: socket.socket) -> None:
    """A worker's main: the same `touchpoint ingest` app, served on the inherited socket."""
    from services.cli import serve_on

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C and sends SIGTERM
    serve_on(index, sock)


def supervise(settings: Settings, workers: int) -> int:
    """Start ``workers`` processes, keep them running, stop them together. Returns the exit code."""
    sockets = [bind(settings) for _ in range(workers)]  # held here too: a respawned worker finds its queue
    metrics_dir = tempfile.mkdtemp(prefix="touchpoint-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")  # fresh interpreters see PROMETHEUS_MULTIPROC_DIR
    running: dict[int, BaseProcess] = {}
    stopping = False
    interrupted = False

    def spawn(index: int) -> None:
        process = context.Process(target=_run_worker, args=(index, sockets[index]), name=f"touchpoint-ingest-w{index}")
        process.start()
        running[index] = process
        log.info("worker started", extra={"worker": index, "pid": process.pid})

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping, interrupted
        stopping = True
        interrupted = interrupted or signum == signal.SIGINT

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(workers):
            spawn(index)
        log.info(
            "ingest workers serving",
            extra={"workers": workers, "url": f"http://{settings.host}:{settings.port}"},
        )
        while not stopping:
            time.sleep(0.2)
            for index, process in list(running.items()):
                if process.is_alive() or stopping:
                    continue
                _mark_dead(process.pid)
                log.error(
                    "worker died; starting it again",
                    extra={"worker": index, "pid": process.pid, "exitcode": process.exitcode},
                )
                time.sleep(RESPAWN_PAUSE_S)
                spawn(index)
    finally:
        for process in running.values():
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for process in running.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for sock in sockets:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
        log.info("ingest workers stopped", extra={"workers": workers})
    return 130 if interrupted else 0


def _mark_dead(pid: int | None) -> None:
    if pid is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
