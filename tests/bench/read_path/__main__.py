"""The read-path benchmark: a large customer's database, its queries, reads under ingest.

    .venv/bin/python -m tests.bench.read_path generate [--events 50000000] [--jobs 2]
    .venv/bin/python -m tests.bench.read_path sizes
    .venv/bin/python -m tests.bench.read_path queries
    .venv/bin/python -m tests.bench.read_path load
    .venv/bin/python -m tests.bench.read_path drain [--rounds 4] [--toggle VARIANT]
    .venv/bin/python -m tests.bench.read_path contacts
    .venv/bin/python -m tests.bench.read_path drop

``generate`` writes the data set (docs/performance.md, "The read path") into the schema
``readpath`` of the local stack with COPY; run it again after a stop and it carries on
from the first chunk not written. ``--pages`` and ``--conversations`` default to 1/25,000
and 1/25 of ``--events`` (2,000 and 2,000,000 for 50,000,000). Needs ``convsync up``.
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.bench.read_path import dataset, sizes
from tests.bench.read_path.shape import Shape
from tests.fixtures.stack import _stack_settings

SCHEMA = "readpath"


def _shape(args: argparse.Namespace) -> Shape:
    events = int(args.events)
    pages = int(args.pages or max(1, events // 25_000))
    conversations = int(args.conversations or max(pages, events // 25))
    return Shape(pages, conversations, events, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.read_path")
    parser.add_argument("--schema", default=SCHEMA)
    parser.add_argument("--topic-prefix", default=None, help="(internal) the topics' prefix")
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write (or finish writing) the data set")
    gen.add_argument("--events", type=int, default=50_000_000)
    gen.add_argument("--pages", type=int, default=None)
    gen.add_argument("--conversations", type=int, default=None)
    gen.add_argument("--seed", type=int, default=24)
    gen.add_argument("--jobs", type=int, default=2)
    sub.add_parser("sizes", help="bytes on disk, per table part and per event")
    sub.add_parser("drop", help="drop the data set's schema")
    sub.add_parser("contacts", help="write the contacts of a data set made without them")
    from tests.bench.read_path import drain, load, queries, readers, server

    queries.add_parser(sub)
    load.add_parser(sub)
    drain.add_parser(sub)
    server.add_parser(sub)
    readers.add_parser(sub)
    args = parser.parse_args(argv)
    settings = _stack_settings()
    if args.topic_prefix:
        settings = settings.model_copy(update={"topic_prefix": args.topic_prefix})
    if args.command == "generate":
        shape = _shape(args)
        print(f"data set {shape.as_json()} into schema {args.schema}")
        started = time.monotonic()
        dataset.prepare(settings, args.schema, shape)
        n = dataset.write_chunks(settings, args.schema, shape, jobs=args.jobs)
        print(f"{n} events written in {time.monotonic() - started:.0f} s; finishing")
        dataset.finish(settings, args.schema, shape)
        print(f"done in {time.monotonic() - started:.0f} s")
        print(sizes.report(settings, args.schema))
    elif args.command == "sizes":
        print(sizes.report(settings, args.schema))
    elif args.command == "contacts":
        dataset.fill_contacts(settings, args.schema, dataset.stored_shape(settings, args.schema))
    elif args.command == "drop":
        dataset.drop(settings, args.schema)
        print(f"dropped schema {args.schema}")
    else:
        return int(args.run(settings, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
