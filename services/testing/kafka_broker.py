"""A real single-node Apache Kafka broker (KRaft) for development, tests and benchmarks.

Why: tests must run against a real broker, and no Docker engine is available on
every machine. Kafka's jars come from Maven Central through ``mvn`` (JDK 17+
required) and are cached outside the repository, so only the first run downloads.

    python -m services.testing.kafka_broker up      # start, print the bootstrap address
    python -m services.testing.kafka_broker down    # stop cleanly, remove the temp dir
    python -m services.testing.kafka_broker fetch   # only resolve the jars
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.1.1"
LOG4J_VERSION = "2.24.3"
SLF4J_VERSION = "2.0.17"
_POM_REVISION = 2  # bump when the dependency list changes, to refetch
READY_MARKER = "Kafka Server started"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.touchpoint</groupId>
  <artifactId>local-kafka</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>{kafka}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>{slf4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>{log4j}</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>{log4j}</version></dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class BrokerError(RuntimeError):
    """The broker could not be fetched or started; the message says what to do."""


def cache_dir() -> Path:
    base = os.environ.get("TOUCHPOINT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "touchpoint"
    )
    return Path(base) / f"kafka-{KAFKA_VERSION}-{_POM_REVISION}"


def _say(message: str) -> None:
    print(f"[kafka] {message}", file=sys.stderr, flush=True)


def _require(tool: str, hint: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise BrokerError(f"'{tool}' not found on PATH: {hint}")
    return path


def check_java() -> None:
    java = _require("java", "install a JDK 17 or newer (Debian: apt-get install openjdk-17-jdk-headless)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    try:
        major = int(out.split('"')[1].split(".")[0])
    except (IndexError, ValueError):
        major = 0
    if major < 17:
        raise BrokerError(f"Kafka {KAFKA_VERSION} needs Java 17 or newer, found: {out.splitlines()[:1]}")


def fetch() -> Path:
    """Resolve Kafka and its runtime dependencies into the cache; return the lib dir."""
    root = cache_dir()
    lib = root / "lib"
    done = root / ".complete"
    if done.exists():
        return lib
    check_java()
    mvn = _require("mvn", "install Apache Maven (Debian: apt-get install maven)")
    root.mkdir(parents=True, exist_ok=True)
    (root / "pom.xml").write_text(_POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION, slf4j=SLF4J_VERSION))
    _say(f"resolving Apache Kafka {KAFKA_VERSION} from Maven Central into {lib} (first run only)")
    tmp_lib = root / "lib.partial"
    shutil.rmtree(tmp_lib, ignore_errors=True)
    proc = subprocess.run(
        [
            mvn,
            "-B",
            "-q",
            "-f",
            str(root / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp_lib}",
            "-DincludeScope=runtime",
        ],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise BrokerError(
            "mvn could not resolve Kafka; check network access to Maven Central.\n"
            + (proc.stdout + proc.stderr)[-3000:]
        )
    shutil.rmtree(lib, ignore_errors=True)
    tmp_lib.rename(lib)
    done.write_text(KAFKA_VERSION)
    _say(f"cached {len(list(lib.glob('*.jar')))} jars")
    return lib


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Broker:
    """A running broker: its address, process and working directory."""

    port: int
    controller_port: int
    workdir: Path
    pid: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    def alive(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the broker (fault tests); the log dir stays for a restart."""
        _signal(self.pid, signal.SIGKILL)
        self._reap(10)

    def stop(self, timeout: float = 30.0, remove: bool = True) -> None:
        """SIGTERM, wait for a clean shutdown, then remove the temp dir."""
        if self.alive():
            _signal(self.pid, signal.SIGTERM)
            if not self._reap(timeout):
                _say("broker did not stop in time; killing it")
                _signal(self.pid, signal.SIGKILL)
                self._reap(10)
        if remove:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, timeout: float = 90.0) -> None:
        """Start the broker again on the same log dir and ports."""
        if self.alive():
            self.kill()
        started = _launch(self.workdir, self.port)
        self.pid, self.proc = started.pid, started.proc
        _wait_ready(self, timeout)

    def _reap(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None:
                if self.proc.poll() is not None:
                    return True
            elif not self.alive():
                return True
            time.sleep(0.1)
        return False


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _write_config(workdir: Path, port: int, controller_port: int) -> None:
    (workdir / "server.properties").write_text(
        "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
                f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={workdir / 'data'}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "auto.create.topics.enable=false",
                "",
            ]
        )
    )
    (workdir / "log4j2.properties").write_text(_LOG4J2.format(log=workdir / "server.log"))


def _java_cmd(workdir: Path, main: str, *args: str) -> list[str]:
    lib = cache_dir() / "lib"
    heap = os.environ.get("TOUCHPOINT_KAFKA_HEAP", "768m")
    return [
        shutil.which("java") or "java",
        f"-Xms{heap}",
        f"-Xmx{heap}",
        "-XX:+UseG1GC",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={workdir / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={workdir}",
        "-cp",
        str(lib / "*"),
        main,
        *args,
    ]


@dataclass
class _Launched:
    pid: int
    proc: subprocess.Popen[bytes]


def _launch(workdir: Path, port: int) -> _Launched:
    out = open(workdir / "stdout.log", "ab")
    proc = subprocess.Popen(
        _java_cmd(workdir, "kafka.Kafka", str(workdir / "server.properties")),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    out.close()
    return _Launched(proc.pid, proc)


def _wait_ready(broker: Broker, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_note = time.monotonic()
    while time.monotonic() < deadline:
        if not broker.alive():
            tail = broker.log_file.read_text(errors="replace")[-3000:] if broker.log_file.exists() else ""
            stdout = (broker.workdir / "stdout.log").read_text(errors="replace")[-2000:]
            raise BrokerError(f"Kafka broker exited during start-up.\n{tail}\n{stdout}")
        ready = broker.log_file.exists() and READY_MARKER in broker.log_file.read_text(errors="replace")
        if ready and _port_open(broker.port):
            return
        if time.monotonic() - last_note > 10:
            _say(f"waiting for the broker on {broker.bootstrap} ...")
            last_note = time.monotonic()
        time.sleep(0.2)
    broker.stop(remove=False)
    raise BrokerError(f"Kafka broker not ready after {timeout:.0f}s; see {broker.log_file}")


def new_cluster_id() -> str:
    """A random KRaft cluster id, as Kafka's own `Uuid.randomUuid` makes it.

    Base64 of a random UUID starts with '-' one time in 64; argparse in
    `kafka-storage format` then reads it as an option and the format fails, so
    such ids are drawn again (Kafka does the same) and the id is passed as
    `--cluster-id=ID` besides.
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


def start(port: int | None = None, workdir: Path | None = None, timeout: float = 120.0) -> Broker:
    """Fetch if needed, format a KRaft log dir in a temp dir and start the broker."""
    fetch()
    check_java()
    port = port or free_port()
    controller_port = free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="touchpoint-kafka-"))
    workdir.mkdir(parents=True, exist_ok=True)
    _write_config(workdir, port, controller_port)
    cluster_id = new_cluster_id()
    fmt = subprocess.run(
        _java_cmd(
            workdir,
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster_id}",
            "--config",
            str(workdir / "server.properties"),
        ),
        capture_output=True,
        text=True,
    )
    if fmt.returncode != 0:
        raise BrokerError(f"formatting the KRaft log dir failed:\n{fmt.stdout}{fmt.stderr}")
    _say(f"starting Kafka {KAFKA_VERSION} on 127.0.0.1:{port} (dir {workdir})")
    launched = _launch(workdir, port)
    broker = Broker(port, controller_port, workdir, launched.pid, launched.proc)
    _wait_ready(broker, timeout)
    _say(f"ready: TOUCHPOINT_KAFKA_BOOTSTRAP={broker.bootstrap}")
    return broker


def _state_file(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"touchpoint-kafka-{port}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kafka_broker", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "fetch"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("TOUCHPOINT_KAFKA_PORT", "9092")))
    args = parser.parse_args(argv)
    state = _state_file(args.port)
    try:
        if args.command == "fetch":
            print(fetch())
        elif args.command == "up":
            if state.exists():
                info = json.loads(state.read_text())
                try:
                    os.kill(info["pid"], 0)
                    _say(f"already running: TOUCHPOINT_KAFKA_BOOTSTRAP=127.0.0.1:{args.port}")
                    return 0
                except ProcessLookupError:
                    state.unlink()
            if _port_open(args.port):
                raise BrokerError(f"port {args.port} is taken; pass --port or set TOUCHPOINT_KAFKA_PORT")
            broker = start(port=args.port)
            state.write_text(
                json.dumps(
                    {"pid": broker.pid, "workdir": str(broker.workdir), "controller_port": broker.controller_port}
                )
            )
            print(f"TOUCHPOINT_KAFKA_BOOTSTRAP={broker.bootstrap}")
        else:
            if not state.exists():
                _say(f"no broker started by this script on port {args.port}")
                return 0
            info = json.loads(state.read_text())
            Broker(args.port, info["controller_port"], Path(info["workdir"]), info["pid"]).stop()
            state.unlink()
            _say("stopped")
    except BrokerError as exc:
        _say(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
