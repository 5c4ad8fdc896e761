"""`drain`: what a stored event costs on the data set, round by round, with no readers.

Each round produces a backlog of new facts of the data set's conversations (``load``'s
events) at once and times ``convsync materialize`` (a child process, default settings)
draining it: events/s, CPU per event of the materializer and of Postgres, WAL bytes
per event. With ``--toggle``, every second round runs with one thing changed, so the
two variants alternate in one run:

* ``name-index``: the triggers that keep ``conversation_name_index`` (migration 0018) on
  ``conversations`` disabled; the index's times are brought up to date after the round;
* ``dropped-indexes``: the two indexes of ``events`` that migration 0019 dropped built
  again before the round (not timed) and dropped after it;
* ``shared-buffers``: the local stack's Postgres with ``shared_buffers`` at 256MB (its
  setting until 2026-12-08) instead of a quarter of the machine's memory; Postgres is
  restarted before every round of both variants (``ALTER SYSTEM`` through its socket, as
  the OS user the stack maps to its superuser), then warmed up with 1,000 untimed
  events. Each round therefore starts cold, right after a checkpoint.

``--shared-buffers VALUE`` runs every round with that setting instead (Postgres restarted
once before the first round, and once more after the last with the stack's own), and
``--warm N`` drains N rounds first that no figure counts: with both, two runs compare
settings on a warm server.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from consumers.materializer.config import BatchConfig
from convsync.db import connect
from convsync.kafka import admin_client, ensure_topics, topic_specs
from convsync.settings import Settings
from deploy.postgres_local import SUPERUSER, LocalPostgres
from deploy.stack import load_info
from tests.bench.bench_materializer import Child
from tests.bench.procstat import ServerCpu, cpu_seconds
from tests.bench.read_path.dataset import stored_shape
from tests.bench.read_path.load import (
    Producer,
    add_seed,
    new_events,
    run_seed,
    stored,
    wait_stored,
)
from tests.fixtures.kafka import delete_topics_of

OLD_SHARED_BUFFERS = "256MB"  # the local stack's setting until 2026-12-08
VARIANTS = {
    None: "as built",
    "name-index": "without the name index's triggers",
    "dropped-indexes": "with the indexes 0019 dropped",
    "shared-buffers": f"with shared_buffers at {OLD_SHARED_BUFFERS}",
}
NAME_TRIGGERS = ("conversations_name_index_update", "conversations_name_index_insert")

# The name index's times, as its triggers would have left them.
_RESYNC = """
UPDATE {s}.conversation_name_index AS x
SET sort_at = COALESCE(c.last_message_at, '-infinity')
FROM {s}.conversations AS c
WHERE x.page_id = c.page_id AND x.psid = c.psid
  AND x.sort_at <> COALESCE(c.last_message_at, '-infinity')
"""


# The indexes migration 0019 dropped: name, what it was built on.
DROPPED = (
    ("events_mid_idx", "(mid) WHERE mid IS NOT NULL"),
    ("events_message_changes_idx", "(page_id, psid, mid, kind) WHERE kind IN ('edit', 'reaction')"),
)


def add_parser(sub: Any) -> None:
    """Add the ``drain`` subcommand."""
    p = sub.add_parser("drain", help="the materializer draining backlogs, no readers")
    p.add_argument("--backlog", type=int, default=100_000, help="events a round")
    p.add_argument("--rounds", type=int, default=4)
    add_seed(p)
    p.add_argument(
        "--toggle",
        choices=("name-index", "dropped-indexes", "shared-buffers"),
        default=None,
        help="every second round without the name index's triggers, with the indexes"
        f" migration 0019 dropped, or with shared_buffers at {OLD_SHARED_BUFFERS}"
        " (Postgres restarted before every round)",
    )
    p.add_argument(
        "--shared-buffers",
        default=None,
        help="every round with this shared_buffers (Postgres restarted before the first"
        " round and after the last)",
    )
    p.add_argument("--warm", type=int, default=0, help="untimed rounds before the first")
    p.set_defaults(run=run)


def name_triggers(settings: Settings, enabled: bool) -> None:
    """Enable or disable the name index's triggers on ``conversations``; on enabling,
    bring the index's times up to date first (same transaction)."""
    s = sql.Identifier(settings.db_schema)
    verb = sql.SQL("ENABLE" if enabled else "DISABLE")
    with connect(settings) as conn, conn.transaction():
        conn.execute("SET LOCAL lock_timeout = '30s'")
        if enabled:
            conn.execute(
                sql.SQL("LOCK TABLE {}.conversations IN SHARE ROW EXCLUSIVE MODE").format(s)
            )
            conn.execute(sql.SQL(_RESYNC).format(s=s))
        for name in NAME_TRIGGERS:
            conn.execute(
                sql.SQL("ALTER TABLE {}.conversations {} TRIGGER {}").format(
                    s, verb, sql.Identifier(name)
                )
            )


def dropped_indexes(settings: Settings, built: bool) -> None:
    """Build the indexes migration 0019 dropped, or drop them again."""
    s = sql.Identifier(settings.db_schema)
    with connect(settings) as conn:
        conn.autocommit = True
        conn.execute("SET maintenance_work_mem = '512MB'")
        for name, definition in DROPPED:
            index = sql.Identifier(name)
            if built:
                on = sql.SQL(definition)
                conn.execute(sql.SQL("CREATE INDEX {} ON {}.events {}").format(index, s, on))
            else:
                conn.execute(sql.SQL("DROP INDEX IF EXISTS {}.{}").format(s, index))


def shared_buffers(settings: Settings, value: str | None) -> None:
    """Set ``shared_buffers`` of the local stack's Postgres to ``value`` (None: its own
    setting again) and restart it."""
    state = Path(settings.state_dir)
    info = load_info(state)
    if info is None:
        raise SystemExit(f"no local stack in {state}: --toggle shared-buffers restarts it")
    pg = LocalPostgres(state, info.pg_port)
    with psycopg.connect(
        host=str(pg.root), port=pg.port, user=SUPERUSER, dbname="postgres", autocommit=True,
        connect_timeout=10,
    ) as conn:  # fmt: skip
        if value is None:
            conn.execute("ALTER SYSTEM RESET shared_buffers")
        else:
            conn.execute(sql.SQL("ALTER SYSTEM SET shared_buffers = {}").format(value))
    pg.restart()


def _variant(settings: Settings, toggle: str | None, on: bool) -> None:
    """Enter (``on``) or leave the changed variant of ``toggle``."""
    if toggle == "name-index":
        name_triggers(settings, enabled=not on)
    elif toggle == "dropped-indexes":
        dropped_indexes(settings, built=on)
    elif toggle == "shared-buffers":
        shared_buffers(settings, OLD_SHARED_BUFFERS if on else None)


def wal_bytes(settings: Settings) -> int:
    """The server's WAL position in bytes (every database's writes, the checkpoints')."""
    with connect(settings) as conn:
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')").fetchone()
    return int(str(row[0])) if row else 0


def run(settings: Settings, args: argparse.Namespace) -> int:
    """The ``drain`` subcommand."""
    s = settings.model_copy(
        update={"db_schema": args.schema, "topic_prefix": f"rpdrain{uuid.uuid4().hex[:8]}"}
    )
    shape = stored_shape(s, args.schema)
    ensure_topics(admin_client(s), topic_specs(s))
    if args.toggle == "shared-buffers" and args.shared_buffers is not None:
        raise SystemExit("--toggle shared-buffers and --shared-buffers both set the setting")
    rounds = args.warm + args.rounds
    n = rounds * (args.backlog + 1000) + 1000  # a warm-up before each round at most
    print(f"making {n} events ...", flush=True)
    seed = run_seed(args)
    producer = Producer(s, new_events(shape, n, seed, int(time.time() * 1000), 5000))
    group = f"rpdrain-{uuid.uuid4().hex[:8]}"
    log = Path(tempfile.mkstemp(prefix="read-path-drain-", suffix=".log")[1])
    if args.shared_buffers is not None:
        shared_buffers(s, args.shared_buffers)
        print(f"shared_buffers {args.shared_buffers} (Postgres restarted)", flush=True)
    child = Child(s, group, BatchConfig().max_records, log, None)
    pid, server_cpu = child.proc.pid, ServerCpu(s)
    rows: dict[str, list[tuple[float, float, float, float]]] = {}  # rate, CPU x2, WAL
    try:
        producer.burst(1000)  # joins the group, warms up: not timed
        wait_stored(s, group, 1000, 120)
        for i in range(rounds):
            warming = i < args.warm
            changed = args.toggle is not None and not warming and (i - args.warm) % 2 == 1
            variant = VARIANTS[args.toggle] if changed else "as built"
            if args.shared_buffers is not None:
                variant = f"shared_buffers {args.shared_buffers}"
            if changed:
                _variant(s, args.toggle, on=True)
            if args.toggle == "shared-buffers":
                if not changed:
                    shared_buffers(s, None)  # a restart before every round
                server_cpu = ServerCpu(s)  # the restarted server's postmaster
                warm = stored(s, group) + 1000
                producer.burst(1000)
                wait_stored(s, group, warm, 300)
            try:
                load = os.getloadavg()[0]
                start_at, t0 = stored(s, group), time.monotonic()
                cpu0, srv0, wal0 = cpu_seconds(pid), server_cpu.seconds(), wal_bytes(s)
                producer.burst(args.backlog)
                t1 = wait_stored(s, group, start_at + args.backlog, 1800)
                cpu1, srv1, wal1 = cpu_seconds(pid), server_cpu.seconds(), wal_bytes(s)
            finally:
                if changed:
                    _variant(s, args.toggle, on=False)
            rate = args.backlog / (t1 - t0)
            per = 1e6 / args.backlog
            pg = (srv1 - srv0) * per if srv0 is not None and srv1 is not None else float("nan")
            wal = (wal1 - wal0) / args.backlog
            if not warming:
                rows.setdefault(variant, []).append((rate, (cpu1 - cpu0) * per, pg, wal))
            label = "warm-up, not counted" if warming else variant
            print(
                f"round {i + 1} ({label}), load {load:.1f}: {rate:,.0f} events/s;"
                f" CPU µs/event: materializer {(cpu1 - cpu0) * per:.0f}, Postgres {pg:.0f};"
                f" WAL {wal:,.0f} bytes/event",
                flush=True,
            )
    finally:
        child.stop()
        delete_topics_of(s)
        log.unlink()
        if args.shared_buffers is not None:
            shared_buffers(s, None)
    medians = {}
    for variant, values in rows.items():
        medians[variant] = [statistics.median(v[j] for v in values) for j in range(4)]
        rate, mat, pg, wal = medians[variant]
        print(
            f"{variant}: median {rate:,.0f} events/s over {len(values)} rounds;"
            f" CPU µs/event: materializer {mat:.0f}, Postgres {pg:.0f}; WAL {wal:,.0f} bytes/event"
        )
    if args.toggle is not None and len(medians) == 2:
        ratio = medians["as built"][0] / medians[VARIANTS[args.toggle]][0]
        print(f"as built / {VARIANTS[args.toggle]} = {ratio:.2f}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0
