"""The cyclic garbage collector's tuning, for the services and the benchmarks' simulated
clients alike (standard library only, so a client process need not load the kit's server side).

Measured in dispatch under a push to 10,000 streams: with Python's defaults the collector took
12 s of CPU over the run, full collections up to 1.1 s each, every stream and request stalled
meanwhile; each simulated client process lost ~2.5 s the same way."""
from __future__ import annotations

import gc

DEFAULT_THRESHOLD = 20_000  # Python's default is 700


def tune_gc(threshold: int = DEFAULT_THRESHOLD) -> None:
    """Call once the process is set up. What was built so far (modules, the app, the routes)
    lives as long as the process: frozen, no collection walks it again. The youngest
    generation is collected every `threshold` allocations instead of 700, so far fewer
    survivors are promoted, and full collections (over everything older) become rare. Cycles
    are still collected: memory stays bounded. 0 keeps Python's defaults."""
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)
