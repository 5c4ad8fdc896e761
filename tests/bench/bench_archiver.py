"""Archiver benchmark: (a) download throughput of the archiver's fetcher (policy checks,
streaming to a temp file, sha256, fsync, link) vs a bare aiohttp loop that reads the
same files and drops the bytes; (b) peak RSS of a process archiving one large file vs
the same process archiving a small one (memory does not grow with file size).

Run: ``.venv/bin/python -m tests.bench.bench_archiver [--mib 32] [--files 8]``. Needs no
Kafka or Postgres: it measures the download path, which is where the bytes go. Numbers
are noisy on a shared machine; the ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from consumers.archiver.fetch import Fetcher
from consumers.archiver.settings import ArchiverSettings
from consumers.archiver.storage import MediaStore
from deploy.simulator.media import MediaServer

MIB = 1024 * 1024


def settings_for(server: MediaServer, folder: Path, concurrency: int) -> ArchiverSettings:
    return ArchiverSettings(
        dir=folder,
        hosts=[server.base_url.removeprefix("http://")],
        allow_loopback=True,
        max_bytes=1024 * MIB,
        concurrency=concurrency,
    )


async def archive(urls: list[str], settings: ArchiverSettings) -> float:
    """Fetch ``urls`` through the archiver's fetcher; return the seconds taken."""
    assert settings.dir is not None
    store = MediaStore(settings.dir)
    store.prepare()
    gate = asyncio.Semaphore(settings.concurrency)
    async with Fetcher(settings, store) as fetcher:

        async def one(url: str) -> None:
            async with gate:
                await fetcher.fetch(url)

        started = time.perf_counter()
        await asyncio.gather(*(one(u) for u in urls))
        return time.perf_counter() - started


async def bare(urls: list[str], concurrency: int) -> float:
    """Read ``urls`` with plain aiohttp, dropping the bytes; return the seconds taken."""
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def one(url: str) -> None:
            async with gate, session.get(url) as resp:
                async for _ in resp.content.iter_any():
                    pass

        started = time.perf_counter()
        await asyncio.gather(*(one(u) for u in urls))
        return time.perf_counter() - started


def serve_in_child(mib: int) -> tuple[subprocess.Popen[str], str]:
    """Start a fake CDN in a child process (its memory is not ours); return it and its URL."""
    code = (
        "import asyncio, sys\n"
        "from deploy.simulator.media import MediaServer\n"
        "async def main():\n"
        f"    s = MediaServer(huge_bytes={mib} * 1024 * 1024)\n"
        "    print(await s.start(), flush=True)\n"
        "    await asyncio.Event().wait()\n"
        "asyncio.run(main())\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def peak_rss_mib(base_url: str, name: str) -> float:
    """Archive one file in a fresh process; return that process's peak RSS in MiB."""
    code = (
        "import asyncio, resource, sys, tempfile\n"
        "from pathlib import Path\n"
        "from deploy.simulator.media import MediaServer\n"
        "from tests.bench.bench_archiver import archive, settings_for\n"
        "server = MediaServer(); server.base_url = sys.argv[1]\n"
        "with tempfile.TemporaryDirectory() as d:\n"
        "    asyncio.run(archive([server.url(sys.argv[2])], settings_for(server, Path(d), 1)))\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, base_url, name], capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=32, help="size of each file")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-mib", type=int, default=512, help="size of the large file")
    args = parser.parse_args()

    proc, base_url = serve_in_child(args.mib)
    try:
        server = MediaServer()
        server.base_url = base_url
        total = args.files * args.mib
        print(f"{args.files} files x {args.mib} MiB, concurrency {args.concurrency}")
        for r in range(args.rounds):
            urls = [server.url(f"huge-r{r}-{i}.bin") for i in range(args.files)]
            b = asyncio.run(bare(urls, args.concurrency))
            with tempfile.TemporaryDirectory() as folder:
                a = asyncio.run(archive(urls, settings_for(server, Path(folder), args.concurrency)))
            print(
                f"round {r + 1}: archiver {total / a:7.1f} MiB/s, bare aiohttp "
                f"{total / b:7.1f} MiB/s: archiver/bare {b / a:.2f}"
            )
    finally:
        proc.terminate()
        proc.wait(10)
    proc, base_url = serve_in_child(args.rss_mib)
    try:
        small = peak_rss_mib(base_url, "ok-small.bin")
        large = peak_rss_mib(base_url, "huge-large.bin")
        print(
            f"peak RSS: {small:.1f} MiB archiving a file of a few KiB, {large:.1f} MiB "
            f"archiving a {args.rss_mib} MiB file: ratio {large / small:.2f}"
        )
    finally:
        proc.terminate()
        proc.wait(10)
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB)")


if __name__ == "__main__":
    main()
