"""Benchmark: `convsync import`'s memory against the size of the file, and its speed.

One run, fresh topics (3 partitions): files of N, 10 N and 100 N lines (200-character
texts) are imported in turn, each by a new :class:`Importer`; prints for each the file
size, the peak of Python's allocations during the import (tracemalloc; librdkafka's own
queue is bounded by its settings and not counted), the messages per second, and the
ratios against the smallest file. The import reads and produces one line at a time, so
the peak should stay flat while the file grows a hundredfold.

    .venv/bin/python -m tests.bench.bench_import [--lines 2000]

Needs the stack (`convsync up`). Other work on the machine makes the rates noisy.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

import orjson

from convsync.kafka import admin_client, ensure_topics, topic_specs
from producers.importer import Importer
from tests.fixtures.stack import _stack_settings

T0 = 1_709_294_400_000


def write(path: Path, lines: int) -> Path:
    with path.open("wb") as out:
        for i in range(lines):
            out.write(
                orjson.dumps(
                    {
                        "page": f"p{i % 5}",
                        "platform": "messenger",
                        "psid": f"u{i % 997}",
                        "mid": f"m_{i}",
                        "time": T0 + i * 1000,
                        "direction": "inbound" if i % 2 else "outbound",
                        "text": "x" * 200,
                    }
                )
                + b"\n"
            )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=2000, help="lines of the smallest file")
    args = parser.parse_args()
    base = _stack_settings()
    settings = base.model_copy(
        update={"topic_prefix": f"bimp{uuid.uuid4().hex[:8]}", "partitions": 3}
    )
    admin = admin_client(settings)
    specs = topic_specs(settings, replication_factor=1)
    ensure_topics(admin, specs)
    rows: list[tuple[int, int, int, float]] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for n in (args.lines, 10 * args.lines, 100 * args.lines):
                path = write(Path(tmp) / f"{n}.jsonl", n)
                importer = Importer(settings)
                tracemalloc.start()
                started = time.perf_counter()
                with path.open("rb") as stream:
                    done = importer.run(stream)
                took = time.perf_counter() - started
                _, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                assert done.messages == n, (done.messages, n)
                rows.append((n, path.stat().st_size // 1024, peak // 1024, n / took))
    finally:
        for fut in admin.delete_topics([s.name for s in specs], operation_timeout=30).values():
            fut.result(timeout=30)
    n0, size0, peak0, rate0 = rows[0]
    print(f"{'lines':>8} {'file KiB':>9} {'peak KiB':>9} {'msg/s':>8}  ratios to {n0} lines")
    for n, size, peak, rate in rows:
        print(
            f"{n:>8} {size:>9} {peak:>9} {rate:>8.0f}  file {size / size0:.0f}x, "
            f"peak {peak / peak0:.2f}x, rate {rate / rate0:.2f}x"
        )


if __name__ == "__main__":
    main()
