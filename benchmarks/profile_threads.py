"""Run a Python module under cProfile in *every* thread, not only the main one.

``python -m cProfile`` sees the main thread only; a fedhive coordinator's main thread mostly waits
while the gRPC handler threads receive, check and fold the updates. This wrapper gives each thread
started through :class:`threading.Thread` its own profiler and merges them at exit.

Usage::

    python benchmarks/profile_threads.py -o OUT.prof -m fedhive.common.cli server ...

Writes ``OUT.prof`` (all threads merged), ``OUT.main.prof`` (main thread) and
``OUT.threads.prof`` (every other thread). Read them with :mod:`pstats`. Time spent in threads
that Python does not start (gRPC's C-core pollers) is not seen.
"""

from __future__ import annotations

import cProfile
import pstats
import runpy
import sys
import threading
from typing import Any

_profiles: list[tuple[str, cProfile.Profile]] = []
_lock = threading.Lock()
_orig_run = threading.Thread.run


def _profiled_run(self: threading.Thread) -> None:
    prof = cProfile.Profile()
    with _lock:
        _profiles.append((self.name, prof))
    prof.enable()
    try:
        _orig_run(self)
    finally:
        prof.disable()


class _Snapshot:
    """What pstats.Stats.add wants, built without disabling a profiler from another thread."""

    def __init__(self, prof: cProfile.Profile) -> None:
        prof.snapshot_stats()
        self.stats: dict[Any, Any] = prof.stats

    def create_stats(self) -> None:
        pass


def _dump(out: str, main: cProfile.Profile) -> None:
    main.disable()
    base = out.removesuffix(".prof")
    with _lock:
        snaps = [_Snapshot(p) for _, p in _profiles]
        names = sorted({n.rsplit("_", 1)[0] for n, _ in _profiles})
    # pstats.Stats empties the object it loads from, so each snapshot is loaded exactly once.
    main_stats = pstats.Stats(_Snapshot(main))  # type: ignore[arg-type]
    main_stats.dump_stats(base + ".main.prof")
    if snaps:
        threads = pstats.Stats(*snaps)  # type: ignore[arg-type]
        threads.dump_stats(base + ".threads.prof")
        threads.add(main_stats)
        threads.dump_stats(out)
    else:
        main_stats.dump_stats(out)
    print(
        f"profile_threads: {len(snaps)} thread(s) profiled ({', '.join(names)}) -> {out}",
        file=sys.stderr,
    )


def main() -> int:
    args = sys.argv[1:]
    if len(args) < 4 or args[0] != "-o" or args[2] != "-m":
        print(__doc__, file=sys.stderr)
        return 2
    out, module, rest = args[1], args[3], args[4:]
    sys.argv = [module, *rest]
    threading.Thread.run = _profiled_run  # type: ignore[method-assign]
    main_prof = cProfile.Profile()
    code = 0
    main_prof.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        _dump(out, main_prof)
    return code


if __name__ == "__main__":
    sys.exit(main())
