"""Run a ``convsync`` command under a profiler, for the benchmarks' analyses.

    CONVSYNC_BENCH_PROFILE=DIR python -m tests.bench.profiled streams --web-port ...

writes, when the process ends (normal exit, SIGTERM through the command's own handler,
or ``os._exit``), ``DIR/<command>-<pid>.txt``: pyinstrument's call tree of the main
thread (wall clock, 1 ms samples). With ``CONVSYNC_BENCH_PROFILER=cprofile`` it writes
``DIR/<command>-<pid>.prof`` instead (cProfile timed by the main thread's CPU clock:
exact calls and CPU, about 2x slower).
For ``streams`` it also writes ``DIR/streams-<pid>.batches.tsv``: one line per folded
batch (when it was taken, the wait for it since the last batch ended, its events, how
long folding it took), and ``DIR/streams-<pid>.fetches.tsv``: one line per non-empty
aiokafka fetch handed to faust (when, records, the wait inside ``getmany``).
"""

from __future__ import annotations

import atexit
import cProfile
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO


def _trace_streams(out: Path) -> None:
    """Time each batch ``fold_batch`` gets and each fetch faust's consumer hands over."""
    import streams.app as streams_app

    batches = (out / f"streams-{os.getpid()}.batches.tsv").open("w", buffering=1)
    batches.write("taken_at\twait_s\tevents\tfold_s\n")
    fold_batch = streams_app.fold_batch
    last_end = [time.monotonic()]

    async def timed_fold(folder: Any, batch: Any) -> None:
        taken = time.monotonic()
        await fold_batch(folder, batch)
        end = time.monotonic()
        batches.write(f"{taken:.4f}\t{taken - last_end[0]:.4f}\t{len(batch)}\t{end - taken:.4f}\n")
        last_end[0] = end

    streams_app.fold_batch = timed_fold
    fetches = (out / f"streams-{os.getpid()}.fetches.tsv").open("w", buffering=1)
    fetches.write("at\trecords\tgetmany_s\n")
    new_consumer = streams_app._App._new_consumer

    def traced_consumer(self: Any) -> Any:
        consumer = new_consumer(self)
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

    streams_app._App._new_consumer = traced_consumer  # type: ignore[method-assign]


def _start(out: Path, name: str) -> Callable[[], None]:
    """Start the profiler; return the function that stops it and writes its report."""
    stem = out / f"{name}-{os.getpid()}"
    if os.environ.get("CONVSYNC_BENCH_PROFILER") == "cprofile":
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


def main() -> None:
    out = Path(os.environ["CONVSYNC_BENCH_PROFILE"])
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
