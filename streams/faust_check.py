"""The check at start of streams/faust_fixes.py: the names each fix relies on, looked up.

:data:`FIXES` lists, for each numbered fix F1-F15 (F6 retired, F13 needs none; docs/streams.md,
"Framework fixes"), every private (or relied-on) faust-streaming or aiokafka name it
uses, as a path string with the parameters it calls it with. :func:`check` verifies,
before any consumer starts (``streams.worker.run_worker``), that every such name is
still there with those parameters, and raises :class:`FaustFixError` naming the fix,
the installed versions and what is missing: a release that moved one fails at start,
not later as duplicates or losses.

Separate from ``faust_fixes.py``, which holds the fixes themselves: this module only
reads the installed libraries (by import and introspection) and changes nothing in
them. ``faust_fixes`` re-exports its public names, so ``faust_fixes.check()`` and
``faust_fixes.FIXES`` stay where callers use them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from types import CodeType
from typing import Any, Final

import faust.streams

from convsync.errors import ConvsyncError


class FaustFixError(ConvsyncError):
    """An installed faust-streaming or aiokafka lacks a name a fix of streams/ relies on."""


@dataclass(frozen=True, slots=True)
class Need:
    """One private (or relied-on) name: ``module:Class.attribute`` or ``module:name``.

    ``params``: the leading parameter names (``self`` left out) of the callable, as the
    fix calls it; further parameters must have defaults. ``field``: an instance
    attribute, which the class's own code must read or write. ``kind``: the type the
    object must have.
    """

    path: str
    params: tuple[str, ...] | None = None
    field: bool = False
    kind: type | None = None
    # Names the function's own code must use (how it calls what the fix replaces).
    uses: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Fix:
    number: str
    title: str
    needs: tuple[Need, ...]


_DRIVER: Final = "faust.transport.drivers.aiokafka"
_CONSUMER: Final = f"{_DRIVER}:Consumer"

FIXES: Final = (
    Fix(
        "F1",
        "bind each event of a batch before its table writes",
        (
            Need("faust.streams:_current_event", kind=type(faust.streams._current_event)),
            Need("faust.streams:current_event", params=()),
        ),
    ),
    Fix(
        "F2",
        "stream partitions stay paused until the seek after a rebalance completed",
        (
            Need("faust:App._new_consumer", params=()),
            Need(f"{_CONSUMER}.resume_partitions", params=("tps",)),
            Need(f"{_CONSUMER}.perform_seek", params=()),
            Need(f"{_CONSUMER}._is_changelog_tp", params=("tp",)),
            Need(f"{_CONSUMER}.assignment", params=()),
        ),
    ),
    Fix(
        "F3",
        "stream partitions without a committed offset are rewound to the start",
        (
            Need(f"{_CONSUMER}.perform_seek", params=()),
            Need(f"{_CONSUMER}._committed_offset", field=True),
            Need(f"{_CONSUMER}.seek_wait", params=("partitions",)),
        ),
    ),
    Fix(
        "F4",
        "the fetch gets a copy of the active partitions, and no fetch when it is empty",
        (
            Need("faust:App._new_consumer", params=()),
            Need(f"{_CONSUMER}._getmany", params=("active_partitions", "timeout")),
        ),
    ),
    Fix(
        "F5",
        "table recovery reads where a changelog ends from the broker",
        (
            Need("faust:App._new_consumer", params=()),
            Need(f"{_CONSUMER}._thread", field=True),
            Need(f"{_DRIVER}:AIOKafkaConsumerThread._highwaters", params=("partitions",)),
            Need(f"{_DRIVER}:AIOKafkaConsumerThread._ensure_consumer", params=()),
            Need("aiokafka:AIOKafkaConsumer.end_offsets", params=("partitions",)),
        ),
    ),
    Fix(
        "F7",
        "states written to the store directly; their changelog sent and awaited by the fold",
        (
            Need("faust.tables.base:Collection.data"),
            Need("faust.stores.memory:Store.__setitem__", params=("key", "value")),
            Need("faust.tables.table:Table.on_key_set", params=("key", "value")),
        ),
    ),
    Fix(
        "F8",
        "statistics tables queue their changelog records for the batch's own send",
        (
            Need("mode.utils.collections:ManagedUserDict.__setitem__", params=("key", "value")),
            Need("faust.tables.table:Table.on_key_set", params=("key", "value")),
            Need("faust.tables.base:Collection._maybe_set_key_ttl", params=("key", "partition")),
            Need("faust.sensors:SensorDelegate.on_table_set", params=("table", "key", "value")),
        ),
    ),
    Fix(
        "F9",
        "the store learns the partition of every key this worker writes",
        (
            Need("faust.stores.memory:Store._key_partition", field=True),
            Need("faust.tables.table:Table.on_key_set", params=("key", "value")),
            Need("faust.tables.table:Table.on_key_del", params=("key",)),
        ),
    ),
    Fix(
        "F10",
        "the lag metric reads the offsets faust's consumer read",
        (
            Need("faust:App._consumer", field=True),
            Need(f"{_CONSUMER}._read_offset", field=True),
            Need(f"{_CONSUMER}.highwater", params=("tp",)),
        ),
    ),
    Fix(
        "F11",
        "a fetched record is handed on without wait_first when nothing can block (speed only)",
        (
            Need(f"{_CONSUMER}._drain_messages", params=("fetcher",), uses=("wait_first",)),
            Need("mode:Service.wait_first", params=()),
            Need(f"{_CONSUMER}.callback", field=True),
            Need(f"{_CONSUMER}.suspend_flow", field=True),
            Need("faust.transport.conductor:Conductor._compile_message_handler", params=()),
            Need("faust.transport.conductor:Conductor._tp_to_callback_lock", field=True),
            Need("faust:App.FlowControlQueue", params=("maxsize",), uses=("ThrowableQueue",)),
            Need("mode.utils.queues:ThrowableQueue.clear", params=(), uses=("_putters", "cancel")),
            Need("faust.transport.producer:ProducerBuffer.max_messages", kind=int),
            Need("faust.transport.producer:ProducerBuffer.size"),
            Need("faust.transport.producer:ProducerBuffer.pending", field=True),
            Need("mode.utils.queues:FlowControlEvent.is_active", params=()),
        ),
    ),
    Fix(
        "F12",
        "the next batch gathers while a batch folds (speed only)",
        (
            Need("faust.streams:Stream._enable_passive", params=("channel",)),
            Need("faust.streams:Stream.add_processor", params=("processor",)),
            Need("faust.streams:Stream._processors", field=True),
            Need("faust.streams:Stream.enable_acks", field=True),
            Need("faust.streams:Stream.current_event", field=True),
            Need("faust.streams:Stream.ack", params=("event",)),
            Need("faust.streams:Stream._py_aiter", uses=("_processors", "enable_acks")),
            Need("mode:Service.wait", params=()),
            Need("mode:Service.wait_for_stopped", params=()),
        ),
    ),
    Fix(
        "F14",
        "records decoded, evented and watched without faust's per-record lookups (speed only)",
        (
            Need(
                "faust.serializers.schemas:Schema.compile",
                uses=("loads_key", "loads_value", "create_event"),
            ),
            Need("faust.serializers.schemas:Schema.loads_key", params=("app", "message")),
            Need("faust.serializers.schemas:Schema.loads_value", params=("app", "message")),
            Need("faust:App.create_event", params=("key", "value", "headers", "message")),
            Need("faust:App.on_init_dependencies", params=(), uses=("monitor", "sensors")),
            Need("faust.sensors.base:SensorDelegate.remove", params=("sensor",)),
        ),
    ),
    Fix(
        "F15",
        "the fold's records handed over a fetch at a time (speed only)",
        (
            Need(f"{_CONSUMER}._drain_messages", params=("fetcher",), uses=("getmany",)),
            Need(f"{_CONSUMER}.getmany", params=("timeout",), uses=("_wait_next_records",)),
            Need(f"{_CONSUMER}._wait_next_records", params=("timeout",)),
            Need(f"{_CONSUMER}._to_message", params=("tp", "record")),
            Need(f"{_CONSUMER}._add_gap", params=("tp", "offset_from", "offset_to")),
            Need(f"{_CONSUMER}.commit", params=()),
            Need(f"{_CONSUMER}.perform_seek", params=()),
            Need(f"{_CONSUMER}.flow_active", field=True),
            Need(f"{_CONSUMER}.scheduler", field=True),
            Need(f"{_CONSUMER}._buffered_partitions", field=True),
            Need(f"{_CONSUMER}._read_offset", field=True),
            Need(f"{_CONSUMER}._commit_every", field=True),
            Need(f"{_CONSUMER}._n_acked", field=True),
            Need(f"{_CONSUMER}._unacked_messages", field=True),
            Need(f"{_CONSUMER}._on_message_in", field=True),
            Need("faust.types.app:AppT.consumer_generation_id", kind=int),
            Need("mode.utils.queues:FlowControlEvent.manage_queue", params=("queue",)),
            Need("mode.utils.queues:FlowControlEvent.clear", params=(), uses=("_queues",)),
            Need("mode.utils.queues:FlowControlEvent.acquire", params=()),
            Need("faust.types.tuples:Message.refcount", field=True),
            Need("faust.sensors.base:SensorDelegate.__iter__", params=()),
            Need("faust.types.tuples:Message.tracked", field=True),
            Need("faust.sensors.monitor:Monitor.stream_inbound_time", field=True),
            Need(f"{_DRIVER}:AIOKafkaConsumerThread.verify_event_path", params=("now", "tp")),
        ),
    ),
)


# --- the check -------------------------------------------------------------------------


def versions() -> str:
    """Return the installed faust-streaming and aiokafka versions, for messages."""
    out = []
    for dist in ("faust-streaming", "aiokafka"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


def _code_names(code: CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, CodeType):
            names |= _code_names(const)
    return names


def _class_names(cls: type) -> set[str]:
    """Attribute names the code of ``cls`` and its bases reads or writes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        for member in vars(klass).values():
            funcs = [member.fget] if isinstance(member, property) else [member]
            for func in funcs:
                func = getattr(func, "__func__", func)
                code = getattr(func, "__code__", None)
                if isinstance(code, CodeType):
                    names |= _code_names(code)
    return names


def _problem(need: Need) -> str | None:
    """Return what is wrong with ``need`` in the installed libraries, or None."""
    module_name, _, dotted = need.path.partition(":")
    try:
        obj: Any = import_module(module_name)
    except ImportError as e:
        return f"{need.path}: cannot import {module_name} ({e})"
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if need.field and i == len(parts) - 1:
            if not isinstance(obj, type) or part not in _class_names(obj):
                return f"{need.path}: no attribute {part} in the code of {obj!r}"
            return None
        if isinstance(obj, type):
            # The first implementation in the MRO; an abstract declaration (faust's
            # ConsumerT, TableT) does not count: nothing would run.
            found = next(
                (
                    vars(k)[part]
                    for k in obj.__mro__
                    if part in vars(k) and not getattr(vars(k)[part], "__isabstractmethod__", 0)
                ),
                None,
            )
        else:
            found = getattr(obj, part, None)
        if found is None:
            return f"{need.path}: {part} is gone"
        obj = found
    if need.kind is not None and not isinstance(obj, need.kind):
        return f"{need.path}: is a {type(obj).__name__}, not a {need.kind.__name__}"
    if need.uses:
        code = getattr(obj, "__code__", None)
        missing = [
            n for n in need.uses if not isinstance(code, CodeType) or n not in _code_names(code)
        ]
        if missing:
            return f"{need.path}: no longer uses {', '.join(missing)}"
    if need.params is not None:
        func = obj.__func__ if isinstance(obj, staticmethod | classmethod) else obj
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            return f"{need.path}: not a callable with a signature"
        params = [p for p in sig.parameters.values() if p.name != "self"]
        names = tuple(p.name for p in params[: len(need.params)])
        rest = params[len(need.params) :]
        extra = [
            p.name
            for p in rest
            if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
        if names != need.params or extra:
            found_names = tuple(p.name for p in params)
            return f"{need.path}: parameters {found_names}, expected {need.params}"
    return None


def check(fixes: tuple[Fix, ...] = FIXES) -> None:
    """Verify every name each fix relies on; raise :class:`FaustFixError` otherwise.

    The message names each fix concerned (number and title), what is missing or
    changed, and the installed faust-streaming and aiokafka versions.
    """
    problems = [
        f"{fix.number} ({fix.title}): {problem}"
        for fix in fixes
        for need in fix.needs
        if (problem := _problem(need)) is not None
    ]
    if problems:
        raise FaustFixError(
            f"the streams worker's fixes of faust do not fit the installed {versions()} "
            "(docs/streams.md, Framework fixes; pin the versions of pyproject.toml or port "
            "the fix):\n  " + "\n  ".join(problems)
        )
