"""Run a ``convsync`` command under a profiler, for the benchmarks' analyses.

    CONVSYNC_BENCH_PROFILE=DIR python -m tests.bench.profiled streams --web-port ...

writes, when the process ends (normal exit, SIGTERM through the command's own handler,
or ``os._exit``), ``DIR/<command>-<pid>.txt``: pyinstrument's call tree of the main
thread (wall clock, 1 ms samples). With ``CONVSYNC_BENCH_PROFILER=cprofile`` it writes
``DIR/<command>-<pid>.prof`` instead (cProfile timed by the main thread's CPU clock:
exact calls and CPU, about 2x slower); with ``none``, no profile (the timings below only).
For ``streams`` it also writes ``DIR/streams-<pid>.batches.tsv``: one line per written
batch (when its fold began, the wait since the fold before ended, its events, how long
the fold took and the main thread's CPU meanwhile, the seconds from its first write
stage's start to its last one's end, and each stage's seconds, send to last ack), and
``DIR/streams-<pid>.fetches.tsv``: one line per non-empty aiokafka fetch handed to
faust (when, records, the wait inside ``getmany``).
"""

from __future__ import annotations

import asyncio
import atexit
import cProfile
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

CONSUMERS: list[Any] = []  # faust's consumer, once the app made it
# With CONVSYNC_BENCH_DIRECT_DRAIN: wall seconds of the drain loop by what it awaited.
DRAIN = {"iterate": 0.0, "callback": 0.0, "other": 0.0, "flow": 0.0, "ebb": 0.0, "decode": 0.0}


def _main_cpu() -> float:
    """CPU seconds of the process's main thread so far (readable from any thread)."""
    pid = os.getpid()
    fields = Path(f"/proc/{pid}/task/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _trace_streams(out: Path) -> None:
    """Time each batch's fold and writes, and each fetch faust's consumer hands over."""
    import streams.app as streams_app
    from streams.faust_fixes import FixedApp

    batches = (out / f"streams-{os.getpid()}.batches.tsv").open("w", buffering=1)
    batches.write("taken_at\twait_s\tevents\tfold_s\tfold_cpu_s\twrite_s\tstages_s\n")
    last_fold_end = [time.monotonic()]
    # The batch being written: (fold start, wait before it, events, fold s, fold CPU s).
    folded: list[tuple[float, float, int, float, float]] = []
    fold, stages = streams_app.Folder.fold, streams_app.Folder.stages

    async def timed_fold(self: Any, batch: Any) -> Any:
        taken, cpu = time.monotonic(), _main_cpu()
        plan = await fold(self, batch)
        end = time.monotonic()
        folded.append((taken, taken - last_fold_end[0], len(batch), end - taken, _main_cpu() - cpu))
        last_fold_end[0] = end
        return plan

    def timed_stages(self: Any, plan: Any) -> list[Callable[[], Any]]:
        # Stages of successive batches overlap (streams/pipeline.py); batches are
        # folded and written in the same order, so the oldest fold is this plan's.
        seen = folded.pop(0)
        inner = stages(self, plan)
        began: list[float] = []
        took: list[float] = []

        def timed(j: int, stage: Callable[[], Any]) -> Callable[[], Any]:
            async def run() -> None:
                started = time.monotonic()
                began.append(started)
                await stage()
                took.append(time.monotonic() - started)
                if j == len(inner) - 1:
                    taken, wait, events, fold_s, fold_cpu = seen
                    batches.write(
                        f"{taken:.4f}\t{wait:.4f}\t{events}\t{fold_s:.4f}\t{fold_cpu:.2f}"
                        f"\t{time.monotonic() - began[0]:.4f}"
                        f"\t{','.join(f'{t:.4f}' for t in took)}\n"
                    )

            return run

        return [timed(j, stage) for j, stage in enumerate(inner)]

    streams_app.Folder.fold = timed_fold  # type: ignore[method-assign]
    streams_app.Folder.stages = timed_stages  # type: ignore[method-assign]
    fetches = (out / f"streams-{os.getpid()}.fetches.tsv").open("w", buffering=1)
    fetches.write("at\trecords\tgetmany_s\n")
    new_consumer = FixedApp._new_consumer

    def traced_consumer(self: Any) -> Any:
        consumer = new_consumer(self)
        CONSUMERS.append(consumer)
        getmany = consumer._getmany

        async def _getmany(active_partitions: Any, timeout: float) -> Any:  # noqa: ASYNC109
            started = time.monotonic()
            records = await getmany(active_partitions, timeout)
            n = sum(len(v) for v in records.values()) if records else 0
            if n:
                fetches.write(f"{started:.4f}\t{n}\t{time.monotonic() - started:.4f}\n")
            return records

        consumer._getmany = _getmany
        return consumer

    FixedApp._new_consumer = traced_consumer  # type: ignore[method-assign]
    _trace_queues(out)


def _trace_queues(out: Path) -> None:
    """Sample the stream buffers every 10 ms: the events queued in faust's stream
    channels, how many puts took the slow path (a full buffer: one task and one
    ``asyncio.wait`` per event), and the consumer's buffer-full / buffer-drop calls."""
    import gc

    from faust.transport.consumer import Consumer
    from mode.utils.queues import FlowControlQueue, ThrowableQueue

    counts = {"slow_puts": 0, "full": 0, "drop": 0}
    put = FlowControlQueue.put
    on_full, on_drop = Consumer.on_buffer_full, Consumer.on_buffer_drop

    async def counted_put(self: Any, value: Any) -> None:
        counts["slow_puts"] += 1
        await put(self, value)

    def counted_full(self: Any, tp: Any) -> None:
        counts["full"] += 1
        on_full(self, tp)

    def counted_drop(self: Any, tp: Any) -> None:
        counts["drop"] += 1
        on_drop(self, tp)

    FlowControlQueue.put = counted_put  # type: ignore[method-assign]
    Consumer.on_buffer_full = counted_full  # type: ignore[method-assign]
    Consumer.on_buffer_drop = counted_drop  # type: ignore[method-assign]
    samples = (out / f"streams-{os.getpid()}.queues.tsv").open("w", buffering=1)
    samples.write(
        "at\tqueued\tslow_puts\tbuffer_full\tbuffer_drop\tdelivered\tmain_cpu"
        "\tdrain_iterate\tdrain_callback\tdrain_other\tflow\tebb\tdecode\n"
    )

    def sample() -> None:
        queues: list[Any] = []
        looked = 0.0
        while True:
            time.sleep(0.01)
            if not queues and CONSUMERS and time.monotonic() - looked > 0.5:
                looked = time.monotonic()
                queues = [
                    o for o in gc.get_objects() if isinstance(o, ThrowableQueue) and o.maxsize
                ]
            queued = sum(len(q._queue) for q in queues)
            # The offsets faust's drain loop has handed to the streams so far.
            read = CONSUMERS[0]._read_offset if CONSUMERS else {}
            delivered = sum(v for v in list(read.values()) if v is not None)
            samples.write(
                f"{time.monotonic():.4f}\t{queued}\t{counts['slow_puts']}\t"
                f"{counts['full']}\t{counts['drop']}\t{delivered}\t{_main_cpu():.2f}"
                f"\t{DRAIN['iterate']:.4f}\t{DRAIN['callback']:.4f}\t{DRAIN['other']:.4f}"
                f"\t{DRAIN['flow']:.4f}\t{DRAIN['ebb']:.4f}\t{DRAIN['decode']:.4f}\n"
            )

    threading.Thread(target=sample, daemon=True).start()


def _start(out: Path, name: str) -> Callable[[], None]:
    """Start the profiler; return the function that stops it and writes its report."""
    stem = out / f"{name}-{os.getpid()}"
    which = os.environ.get("CONVSYNC_BENCH_PROFILER", "pyinstrument")
    if which == "none":
        return lambda: None
    if which == "cprofile":
        prof = cProfile.Profile(time.thread_time)  # the main thread's CPU, not wall time
        prof.enable()

        def write_cprofile() -> None:
            prof.disable()
            prof.dump_stats(f"{stem}.prof")

        return write_cprofile
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001)
    profiler.start()

    def write_pyinstrument() -> None:
        profiler.stop()
        report: TextIO
        with Path(f"{stem}.txt").open("w") as report:
            report.write(profiler.output_text(unicode=True, show_all=False))

    return write_pyinstrument


def _name_threads() -> None:
    """Give every Python thread its Python name at the OS level (/proc/<pid>/task/*/comm),
    so ``procstat.thread_cpu`` can tell them apart."""
    import ctypes

    libc = ctypes.CDLL(None)
    pr_set_name = 15
    run = threading.Thread.run

    def named_run(self: threading.Thread) -> None:
        libc.prctl(pr_set_name, self.name[:15].encode(), 0, 0, 0)
        run(self)

    threading.Thread.run = named_run  # type: ignore[method-assign]


def _direct_drain() -> None:
    """The experiment behind docs/performance.md's streams analysis: faust's drain loop
    hands each fetched record to the streams through ``Service.wait_first(callback,
    suspend_flow.wait())``, four tasks and an ``asyncio.wait`` per record; here it
    awaits the callback itself and checks ``suspend_flow`` before each record (what
    ``wait_first`` watched it for). Everything else is faust's loop as it is."""
    from faust.transport.consumer import Consumer

    async def _drain_messages(self: Any, fetcher: Any) -> None:
        clock = time.monotonic
        callback = self.callback
        read_offset = self._read_offset
        acks_enabled_for = self.app.topics.acks_enabled_for
        since_yield = 0
        while not (self._stopped.is_set() or fetcher._stopped.is_set()):
            ait = self.getmany(timeout=1.0)
            await asyncio.sleep(0)
            if self.should_stop:
                continue
            mark = clock()
            async for tp, message in ait:
                now = clock()
                DRAIN["iterate"] += now - mark
                since_yield += 1
                if since_yield > 100:
                    await asyncio.sleep(0)
                    since_yield = 0
                offset = message.offset
                r_offset = read_offset.get(tp)
                if r_offset is not None and offset < r_offset:
                    continue
                gap = offset - (r_offset or 0)
                if gap > 1 and r_offset and acks_enabled_for(message.topic):
                    await self._add_gap(tp, r_offset + 1, offset)
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                if self.suspend_flow.is_set():
                    await self.suspend_flow.wait()
                before = clock()
                await callback(message)
                mark = clock()
                DRAIN["callback"] += mark - before
                DRAIN["other"] += before - now
                read_offset[tp] = offset

    Consumer._drain_messages = _drain_messages  # type: ignore[method-assign]
    _time_callback_parts()


def _time_callback_parts() -> None:
    """Split the drain's callback: flow control, the producer-buffer check, decoding."""
    from faust.channels import Channel
    from faust.transport.producer import ProducerBuffer
    from mode.utils.queues import FlowControlEvent

    def timed(cls: Any, name: str, key: str) -> None:
        original = getattr(cls, name)

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.monotonic()
            try:
                return await original(*args, **kwargs)
            finally:
                DRAIN[key] += time.monotonic() - started

        setattr(cls, name, wrapper)

    timed(FlowControlEvent, "acquire", "flow")
    timed(ProducerBuffer, "wait_until_ebb", "ebb")
    timed(Channel, "decode", "decode")


def main() -> None:
    out = Path(os.environ["CONVSYNC_BENCH_PROFILE"])
    if os.environ.get("CONVSYNC_BENCH_DIRECT_DRAIN"):
        _direct_drain()
    _name_threads()
    out.mkdir(parents=True, exist_ok=True)
    name = sys.argv[1] if len(sys.argv) > 1 else "convsync"
    if name == "streams":
        _trace_streams(out)
    stop = _start(out, name)
    done = [False]

    def finish() -> None:
        if not done[0]:
            done[0] = True
            stop()

    atexit.register(finish)
    real_exit = os._exit

    def exit_after_report(code: int) -> None:
        finish()
        real_exit(code)

    os._exit = exit_after_report  # type: ignore[assignment]
    from cli.main import main as convsync

    sys.argv = ["convsync", *sys.argv[1:]]
    convsync()


if __name__ == "__main__":
    main()
