"""Benchmark: how a giant conversation's dedupe state costs in memory, changelog and CPU.

One conversation receives ``--messages`` distinct messages in batches of ``--batch``
(one changelog write per key touched per batch, as the worker does). Four ways to keep
its folded message digests, each measured on the same digests in the same run:

* ``one record``: every digest in the conversation's record (the code before bounded
  states): the record grows with the history;
* ``hashed buckets``: the proposal of the issue: buckets of at most 512 sorted digests
  keyed by the digests' leading bits, all split when one overflows; each batch rewrites
  every bucket it touched;
* ``per-message keys``: one table key per message;
* ``sealed chunks`` (what streams/ does): at most 255 digests inline in the record, then
  append-only chunks of 256 written once, an in-memory index (streams/digests.py).

Printed per scheme: the largest single record, changelog bytes per message (values and
keys), the memory held per message (tracemalloc: the table values as faust's memory
store keeps them, plus any index), and CPU microseconds per message for the dedupe
look-up and insert; then each as a ratio to ``sealed chunks``.

    .venv/bin/python -m tests.bench.bench_streams_state [--messages 1000000 --batch 1000]

Pure Python, no Kafka: it measures the data structures, not the broker.
"""

from __future__ import annotations

import argparse
import base64
import gc
import hashlib
import time
import tracemalloc
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from streams.digests import CHUNK, DigestIndex, insert

KEY = "9100000000000001:9200000000000001"
RECORD_OVERHEAD = 400  # the rest of a conversation record (scalars, texts of a few words)


@dataclass
class Figures:
    largest: int = 0
    changelog: int = 0
    memory: int = 0
    cpu: float = 0.0

    def write(self, key: str, value: bytes) -> None:
        size = len(key) + len(value)
        self.largest = max(self.largest, len(value))
        self.changelog += size


def digests(n: int) -> list[bytes]:
    return [hashlib.sha256(f"m_{i}".encode()).digest()[:8] for i in range(n)]


def one_record(values: list[bytes], batch: int, fig: Figures) -> object:
    blob = b""
    for start in range(0, len(values), batch):
        for d in values[start : start + batch]:
            grown = insert(blob, d)
            if grown is not None:
                blob = grown
        fig.write(KEY, b"x" * (len(base64.b64encode(blob)) + RECORD_OVERHEAD))
    return blob


def hashed_buckets(values: list[bytes], batch: int, fig: Figures) -> object:
    limit = 512
    depth = 0
    buckets: dict[int, list[int]] = {0: []}
    store: dict[str, bytes] = {}

    def key(b: int) -> str:
        return f"{KEY}#{depth}:{b}"

    def bucket_of(x: int) -> int:
        return x >> (64 - depth) if depth else 0

    for start in range(0, len(values), batch):
        touched: set[int] = set()
        for d in values[start : start + batch]:
            x = int.from_bytes(d, "big")
            b = buckets.setdefault(bucket_of(x), [])
            i = bisect_left(b, x)
            if i < len(b) and b[i] == x:
                continue
            b.insert(i, x)
            touched.add(bucket_of(x))
        while any(len(buckets[b]) > limit for b in touched):
            for b in list(buckets):  # the old depth's keys are deleted (tombstones)
                fig.write(key(b), b"")
                store.pop(key(b), None)
            depth += 1
            old, buckets = buckets, {}
            for values_of in old.values():
                for x in values_of:
                    buckets.setdefault(bucket_of(x), []).append(x)
            touched = set(buckets)
        for b in touched:
            value = b"".join(x.to_bytes(8, "big") for x in buckets[b])
            store[key(b)] = value
            fig.write(key(b), value)
        fig.write(KEY, b"x" * RECORD_OVERHEAD)
    buckets.clear()  # the store holds the values; the lists were the fold's scratch
    return store


def per_message_keys(values: list[bytes], batch: int, fig: Figures) -> object:
    store: dict[str, bytes] = {}
    for start in range(0, len(values), batch):
        for d in values[start : start + batch]:
            k = f"{KEY}#{d.hex()}"
            if k in store:
                continue
            store[k] = b"1"
            fig.write(k, b"1")
        fig.write(KEY, b"x" * RECORD_OVERHEAD)
    return store


def sealed_chunks(values: list[bytes], batch: int, fig: Figures) -> object:
    open_blob = b""
    store: dict[str, bytes] = {}
    index = DigestIndex()
    sealed = 0
    for start in range(0, len(values), batch):
        for d in values[start : start + batch]:
            grown = insert(open_blob, d)
            if grown is None or (sealed and d in index):
                continue
            open_blob = grown
            if len(open_blob) >= CHUNK * 8:
                k = f"{KEY}#{sealed}"
                store[k] = open_blob
                fig.write(k, open_blob)
                index.add(open_blob)
                sealed += 1
                open_blob = b""
        fig.write(KEY, b"x" * (len(base64.b64encode(open_blob)) + RECORD_OVERHEAD))
    return (store, index, open_blob)


SCHEMES: dict[str, Callable[[list[bytes], int, Figures], object]] = {
    "one record": one_record,
    "hashed buckets": hashed_buckets,
    "per-message keys": per_message_keys,
    "sealed chunks": sealed_chunks,
}


def measure(name: str, values: list[bytes], batch: int) -> Figures:
    """Run a scheme twice: timed without tracemalloc (its hooks cost more than the
    allocations they trace), then traced for memory."""
    gc.collect()
    started = time.process_time()
    held = SCHEMES[name](values, batch, Figures())
    cpu = (time.process_time() - started) / len(values) * 1e6
    del held
    fig = Figures()
    gc.collect()
    tracemalloc.start()
    held = SCHEMES[name](values, batch, fig)
    gc.collect()
    fig.memory, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del held
    fig.cpu = cpu
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--skip", action="append", default=[], help="scheme names to skip")
    args = parser.parse_args()
    values = digests(args.messages)
    n = args.messages
    results = {name: measure(name, values, args.batch) for name in SCHEMES if name not in args.skip}
    base = results["sealed chunks"]
    print(f"{n:,} messages of one conversation, batches of {args.batch:,}")
    print(
        f"{'scheme':<18} {'largest record':>15} {'changelog B/msg':>16} "
        f"{'memory B/msg':>13} {'CPU us/msg':>11}   ratios to sealed chunks"
    )
    for name, f in results.items():
        print(
            f"{name:<18} {f.largest:>15,} {f.changelog / n:>16.1f} {f.memory / n:>13.1f} "
            f"{f.cpu:>11.2f}   {f.largest / base.largest:.1f}x, "
            f"{f.changelog / base.changelog:.1f}x, {f.memory / base.memory:.2f}x, "
            f"{f.cpu / base.cpu:.2f}x"
        )


if __name__ == "__main__":
    main()
