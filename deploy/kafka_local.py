"""A local Apache Kafka (KRaft) cluster of 1 or 3 nodes, run from Maven Central jars.

Plain by default. With a SASL password, the broker listener is SASL_PLAINTEXT with
SCRAM-SHA-512 for the user :data:`SASL_USER` (its credential is written into the
metadata when the storage is formatted) and the controller listener needs SASL/PLAIN
with a second generated password: no port of the cluster answers without one.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from convsync.errors import StackError
from deploy._files import ensure_secret, private_dir, write_private
from deploy.processes import read_pid, spawn, stop_pid

log = logging.getLogger(__name__)

KAFKA_DIR: Final = Path(__file__).resolve().parent / "kafka"
KAFKA_VERSION: Final = "4.1.1"
MAIN_CLASS: Final = "kafka.Kafka"
SASL_USER: Final = "convsync"
SASL_MECHANISM: Final = "SCRAM-SHA-512"


def sasl_client_config(password: str) -> dict[str, str]:
    """Return the librdkafka properties that reach a SASL cluster of ours."""
    return {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": SASL_MECHANISM,
        "sasl.username": SASL_USER,
        "sasl.password": password,
    }


def jar_cache_dir() -> Path:
    """Return where the broker jars are cached (shared by every state folder)."""
    override = os.environ.get("CONVSYNC_KAFKA_LIB_DIR")
    if override:
        return Path(override)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "convsync" / f"kafka-{KAFKA_VERSION}"


def ensure_jars() -> Path:
    """Fetch the broker jars with Maven on first use; return the folder that holds them.

    Raises :class:`StackError` when Maven is missing or the download fails.
    """
    lib = jar_cache_dir() / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise StackError("Maven (mvn) is needed to fetch the Kafka jars; apt-get install maven")
    lib.mkdir(parents=True, exist_ok=True)
    log.info("fetching Kafka %s jars with Maven into %s", KAFKA_VERSION, lib)
    proc = subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(KAFKA_DIR / "pom.xml"),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={lib}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise StackError(
            f"mvn could not fetch the Kafka jars:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        )
    if not any(lib.glob("kafka_2.13-*.jar")):
        raise StackError(f"mvn ran but {lib} has no kafka_2.13 jar")
    marker.write_text(KAFKA_VERSION + "\n")
    return lib


def java() -> str:
    """Return the java binary (JAVA_HOME first). Raises StackError if none."""
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise StackError("Java 17+ is needed to run Kafka; apt-get install openjdk-17-jre-headless")
    return found


def _argfile_quote(arg: str) -> str:
    # A java @argument file takes one argument per line; quoted, with \\ and \" escaped.
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class KafkaNode:
    """One combined broker+controller node."""

    node_id: int
    broker_port: int
    controller_port: int
    directory: Path

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def properties(self) -> Path:
        return self.directory / "server.properties"

    @property
    def pid_file(self) -> Path:
        return self.directory / "kafka.pid"

    @property
    def log_file(self) -> Path:
        return self.directory / "kafka.log"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.broker_port}"


@dataclass(frozen=True, slots=True)
class KafkaCluster:
    """A local KRaft cluster: 1 node (standalone quorum) or 3 (static quorum).

    ``sasl_password`` (the client user's) makes it a SASL cluster; give it whenever
    the cluster is started (``running`` and ``stop`` do not need it).
    """

    root: Path
    brokers: int
    base_port: int
    sasl_password: str | None = field(default=None, repr=False)

    @property
    def nodes(self) -> list[KafkaNode]:
        return [
            KafkaNode(
                i + 1,
                self.base_port + 10 * i,
                self.base_port + 10 * i + 1,
                self.root / f"node-{i + 1}",
            )
            for i in range(self.brokers)
        ]

    @property
    def bootstrap(self) -> str:
        return ",".join(n.address for n in self.nodes)

    @property
    def replication_factor(self) -> int:
        return 3 if self.brokers >= 3 else 1

    def node(self, node_id: int) -> KafkaNode:
        return self.nodes[node_id - 1]

    def _properties(self, node: KafkaNode) -> str:
        rf = self.replication_factor
        min_isr = 2 if rf >= 3 else 1
        broker = "SASL_PLAINTEXT" if self.sasl_password else "PLAINTEXT"
        lines = [
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"listeners={broker}://127.0.0.1:{node.broker_port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
            f"advertised.listeners={broker}://127.0.0.1:{node.broker_port}",
            "controller.listener.names=CONTROLLER",
            f"inter.broker.listener.name={broker}",
            f"listener.security.protocol.map={broker}:{broker},CONTROLLER:{broker}",
            f"log.dirs={node.data_dir}",
            f"offsets.topic.replication.factor={rf}",
            f"transaction.state.log.replication.factor={rf}",
            f"transaction.state.log.min.isr={min_isr}",
            f"default.replication.factor={rf}",
            f"min.insync.replicas={min_isr}",
            "num.partitions=12",
            "auto.create.topics.enable=false",
            "group.initial.rebalance.delay.ms=0",
            "unclean.leader.election.enable=false",
        ]
        if self.sasl_password:
            lines += self._sasl_properties(self.sasl_password)
        if self.brokers == 1:
            lines.append(f"controller.quorum.bootstrap.servers=127.0.0.1:{node.controller_port}")
        else:
            voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
            lines.append(f"controller.quorum.voters={voters}")
        return "\n".join(lines) + "\n"

    def _sasl_properties(self, password: str) -> list[str]:
        # SCRAM cannot guard a KRaft controller listener (its credentials live in the
        # metadata the controllers serve), so that listener takes SASL/PLAIN with a
        # static user of its own. Both passwords are generated; this file is 0600.
        controller = ensure_secret(self.root / "controller.password")
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        return [
            f"listener.name.sasl_plaintext.sasl.enabled.mechanisms={SASL_MECHANISM}",
            f"sasl.mechanism.inter.broker.protocol={SASL_MECHANISM}",
            f"listener.name.sasl_plaintext.{SASL_MECHANISM.lower()}.sasl.jaas.config="
            f'{scram} required username="{SASL_USER}" password="{password}";',
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            "sasl.mechanism.controller.protocol=PLAIN",
            f"listener.name.controller.plain.sasl.jaas.config={plain} required "
            f'username="controller" password="{controller}" user_controller="{controller}";',
        ]

    def _format(self, lib: Path, node: KafkaNode, cluster_id: str) -> None:
        args = [
            "kafka.tools.StorageTool",
            "format",
            # "=" form: a base64url id may start with "-", which argparse would take
            # for an option.
            f"--cluster-id={cluster_id}",
            "-c",
            str(node.properties),
            "--ignore-formatted",
        ]
        if self.brokers == 1:
            args.append("--standalone")
        if self.sasl_password:
            # The user's SCRAM credential goes into the metadata bootstrap records.
            args += [
                "--add-scram",
                f"{SASL_MECHANISM}=[name={SASL_USER},password={self.sasl_password}]",
            ]
        # The tool's arguments go through a java @argument file (0600, in the node's
        # 0700 folder, deleted at once): on the command line, the password would be
        # readable in /proc/<pid>/cmdline by every local user.
        argfile = node.directory / "format.args"
        write_private(argfile, "".join(_argfile_quote(a) + "\n" for a in args))
        try:
            proc = subprocess.run(
                [
                    java(),
                    "-cp",
                    f"{lib}/*",
                    f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.yaml'}",
                    f"@{argfile}",
                ],
                capture_output=True,
                text=True,
                check=False,
                timeout=300,
            )
        finally:
            argfile.unlink(missing_ok=True)
        if proc.returncode != 0:
            raise StackError(
                f"kafka storage format failed for node {node.node_id}:\n"
                f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )

    def running(self) -> list[int]:
        """Return the node ids whose process is alive."""
        return [n.node_id for n in self.nodes if self.pid(n) is not None]

    def pid(self, node: KafkaNode) -> int | None:
        """Return the pid of ``node`` if it runs."""
        return read_pid(node.pid_file, str(node.properties))

    def start(self) -> None:
        """Format storage where needed and start every node that is not running.

        Raises :class:`StackError` when the jars or Java are missing or formatting fails.
        """
        lib = ensure_jars()
        self.root.parent.mkdir(parents=True, exist_ok=True)
        private_dir(self.root)
        id_file = self.root / "cluster.id"
        if not id_file.exists():
            # A KRaft cluster id is a base64url UUID without padding.
            raw = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            id_file.write_text(raw + "\n")
        cluster_id = id_file.read_text().strip()
        for node in self.nodes:
            private_dir(node.directory)
            write_private(node.properties, self._properties(node))
            if not (node.data_dir / "meta.properties").exists():
                self._format(lib, node, cluster_id)
        for node in self.nodes:
            self.start_node(node.node_id, lib=lib)

    def start_node(self, node_id: int, *, lib: Path | None = None) -> int:
        """Start one node if it is not running; return its pid."""
        node = self.node(node_id)
        pid = self.pid(node)
        if pid is not None:
            return pid
        lib = lib or ensure_jars()
        heap = os.environ.get("CONVSYNC_KAFKA_HEAP", "512m")
        argv = [
            java(),
            f"-Xmx{heap}",
            "-Xms128m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={KAFKA_DIR / 'log4j2.yaml'}",
            "-cp",
            f"{lib}/*",
            MAIN_CLASS,
            str(node.properties),
        ]
        log.info("starting Kafka node %s on %s", node.node_id, node.address)
        return spawn(argv, log_file=node.log_file, pid_file=node.pid_file)

    def stop_node(self, node_id: int, *, kill: bool = False) -> None:
        """Stop one node: SIGTERM (clean) or SIGKILL (``kill=True``, for fault tests)."""
        node = self.node(node_id)
        pid = self.pid(node)
        if pid is not None:
            stop_pid(pid, sig=signal.SIGKILL if kill else signal.SIGTERM)

    def stop(self) -> None:
        """Stop every node of the cluster."""
        for node in reversed(self.nodes):
            self.stop_node(node.node_id)
