"""The batch processes' collector settings: fewer young collections, cycles still freed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.consumers.procs import REPO

PROBE = textwrap.dedent(
    """
    import gc, sys, weakref
    if sys.argv[1] == "tuned":
        from convsync.gctune import tune_for_batches
        tune_for_batches()
    print(*gc.get_threshold(), gc.get_freeze_count() > 0)

    class Node:
        pass

    # A cycle nobody references: only the collector can free it.
    a, b = Node(), Node()
    a.other, b.other = b, a
    freed = weakref.ref(a)
    del a, b
    before = gc.get_stats()[0]["collections"]
    # One batch's worth of short-lived, acyclic containers, kept alive while "written".
    batch = [(i, {"k": i}, [i]) for i in range(100_000)]
    del batch
    young = gc.get_stats()[0]["collections"] - before
    # Keep allocating until the young generation is collected at least once more.
    keep = [(i,) for i in range(120_000)]
    print(young, freed() is None)
    """
)


def _probe(script: str, *args: str) -> list[str]:
    """Run ``script`` in a fresh interpreter (its collector state is its own); return
    the words it printed."""
    return subprocess.run(
        [sys.executable, "-c", script, *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()


def test_tuned_process_collects_young_objects_rarely_and_still_frees_cycles() -> None:
    default = _probe(PROBE, "default")
    tuned = _probe(PROBE, "tuned")
    assert tuned[:4] == ["50000", "20", "20", "True"], tuned
    young_default, young_tuned = int(default[4]), int(tuned[4])
    # 300,000 container allocations: hundreds of young collections by default.
    assert young_default > 100, default
    assert young_tuned <= 10, tuned
    assert tuned[5] == "True", "an unreachable cycle is still collected"


FREEZE_PROBE = textwrap.dedent(
    """
    import gc, weakref
    import aiohttp, pydantic  # what a server has imported before it serves
    from convsync.gctune import freeze_startup

    tracked = len(gc.get_objects())
    frozen = freeze_startup()

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    freed = weakref.ref(a)
    del a, b
    gc.collect()
    print(tracked, frozen, gc.get_freeze_count(), len(gc.get_objects()), freed() is None)
    """
)


def test_freeze_startup_takes_start_up_objects_out_of_collections() -> None:
    out = _probe(FREEZE_PROBE)
    tracked, frozen, count, after = (int(x) for x in out[:4])
    assert frozen == count > 10_000, out
    # What a full collection walks afterwards: a small fraction of the start-up heap.
    assert after < tracked // 10, out
    assert out[4] == "True", "a cycle made after the freeze is still collected"
