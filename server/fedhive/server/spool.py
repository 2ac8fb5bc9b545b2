"""Staging of checked update payloads until their trailer verifies.

An update is folded into the aggregate only once its whole stream has been checked (digest,
length), so a stream that breaks off or lies leaves no trace. Until then its checked bytes wait in a
spool: in memory while a shared byte budget allows, else in an unlinked temporary file (page cache,
not the coordinator's heap). The budget is shared by all uploads, so the coordinator's memory does
not grow with the number of nodes uploading at once.

In memory, a spool copies each chunk into one buffer of the update's size, taken from the budget's
pool and given back to it when the spool closes: the same buffers serve every round, and the
received chunks are freed at once. (Keeping the received chunk objects instead costs no copy, but
leaves the allocator scattered 1 MiB blocks of every upload; one copy into a pooled buffer costs
a few ms per 40 MB.)

A spool chooses its mode at its first write. When the budget is taken by other uploads it waits up
to ``wait_s`` for one of them to be folded and give its buffer back: meanwhile its stream is not
read, so gRPC's flow control holds the node's upload back. Uploads of small models (several fit the
budget) thus queue for memory instead of paying two copies through a file, and a stalled upload
delays the others by ``wait_s`` at most. An update larger than the whole budget goes to a file at
once.
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

READ_PIECE = 4 << 20


class SpoolBudget:
    """At most ``limit_bytes`` of staging buffers, in use or pooled for reuse."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.used = 0  # bytes of buffers held by open spools
        self._pool: list[bytearray] = []  # buffers given back, kept for the next spools
        self._cv = threading.Condition()

    @property
    def pooled(self) -> int:
        with self._cv:
            return sum(len(b) for b in self._pool)

    def take(self, n: int, wait_s: float = 0.0) -> bytearray | None:
        """A buffer of ``n`` bytes, waiting up to ``wait_s`` for one to be given back; None when
        the budget has no room for it."""
        if n > self.limit:
            return None
        with self._cv:
            if not self._cv.wait_for(lambda: self.used + n <= self.limit, wait_s):
                return None
            self.used += n
            for i, buf in enumerate(self._pool):
                if len(buf) == n:
                    return self._pool.pop(i)
            # no pooled buffer of this size: drop pooled ones until a new buffer fits the limit
            while self._pool and self.used + sum(len(b) for b in self._pool) > self.limit:
                self._pool.pop(0)
        return bytearray(n)

    def give_back(self, buf: bytearray, reuse: bool = True) -> None:
        with self._cv:
            self.used -= len(buf)
            if reuse:
                self._pool.append(buf)
            self._cv.notify_all()

    def clear(self) -> None:
        """Free the pooled buffers (the ones in use stay with their spools)."""
        with self._cv:
            self._pool.clear()


class Spool:
    """Append-only buffer of exactly ``size`` bytes, read back in pieces."""

    def __init__(
        self,
        size: int,
        budget: SpoolBudget,
        directory: Path | None = None,
        wait_s: float = 0.0,
    ) -> None:
        self.size = size
        self.written = 0
        self._budget = budget
        self._directory = directory
        self._wait_s = wait_s
        self._buf: bytearray | None = None
        self._view: memoryview | None = None
        self._fd: int | None = None
        self._closed = False

    @property
    def in_memory(self) -> bool | None:
        """True or False once the mode is chosen (at the first write); None before."""
        if self._buf is not None:
            return True
        return False if self._fd is not None else None

    def _open(self) -> None:
        buf = self._budget.take(self.size, self._wait_s)
        if buf is not None:
            self._buf = buf
            self._view = memoryview(buf)
        else:
            fd, name = tempfile.mkstemp(prefix="fedhive-spool-", dir=self._directory)
            os.unlink(name)
            self._fd = fd

    def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self._closed:
            raise ValueError("spool closed")
        if self.written + n > self.size:
            raise ValueError("spool overflow")
        if self._buf is None and self._fd is None:
            self._open()
        if self._view is not None:
            self._view[self.written : self.written + n] = memoryview(data).cast("B")
        else:
            assert self._fd is not None
            view = memoryview(data)
            done = 0
            while done < n:
                done += os.pwrite(self._fd, view[done:], self.written + done)
        self.written += n

    def pieces(self, offset: int, length: int, piece: int = READ_PIECE) -> Iterator[memoryview]:
        """Bytes [offset, offset+length) in pieces of at most ``piece`` bytes."""
        if offset < 0 or length < 0 or offset + length > self.written:
            end = offset + length
            raise ValueError(f"spool holds {self.written} bytes, asked [{offset}, {end})")
        if length == 0:
            return
        if self._view is not None:
            for start in range(offset, offset + length, piece):
                yield self._view[start : min(start + piece, offset + length)]
            return
        assert self._fd is not None
        buf = bytearray(min(piece, max(length, 1)))
        view = memoryview(buf)
        for start in range(offset, offset + length, piece):
            n = min(piece, offset + length - start)
            got = os.preadv(self._fd, [view[:n]], start)
            if got != n:
                raise OSError(f"short read from spool ({got} of {n} bytes)")
            yield view[:n]

    def close(self) -> None:
        self._closed = True
        if self._buf is not None:
            if self._view is not None:
                self._view.release()
                self._view = None
            buf, self._buf = self._buf, None
            # A piece still referenced (a view kept beyond the fold) must not see the buffer
            # reused by the next spool: then it is not pooled, only its share is given back.
            unshared = sys.getrefcount(buf) <= 2  # this name and the call's argument
            self._budget.give_back(buf, reuse=unshared)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
