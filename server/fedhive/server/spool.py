"""Staging of checked update payloads until their trailer verifies.

An update is folded into the aggregate only once its whole stream has been checked (digest,
length), so a stream that breaks off or lies leaves no trace. Until then its checked bytes wait in a
spool: in memory while a shared byte budget allows (the received chunk buffers themselves are
kept, no copy), else in an unlinked temporary file (page cache, not the coordinator's heap). The
budget is shared by all uploads, so the coordinator's memory does not grow with the number of
nodes uploading at once.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

READ_PIECE = 4 << 20


class SpoolBudget:
    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self.used = 0
        self._lock = threading.Lock()

    def try_take(self, n: int) -> bool:
        with self._lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give_back(self, n: int) -> None:
        with self._lock:
            self.used -= n


class Spool:
    """Append-only buffer of exactly ``size`` bytes, read back in pieces.

    In memory mode :meth:`write` keeps a reference to the buffer it is given (which must not change
    afterwards: the coordinator passes immutable received bytes).
    """

    def __init__(self, size: int, budget: SpoolBudget, directory: Path | None = None) -> None:
        self.size = size
        self.written = 0
        self._budget = budget
        self._mem: list[tuple[int, memoryview]] | None = None
        self._fd: int | None = None
        if budget.try_take(size):
            self._mem = []
        else:
            fd, name = tempfile.mkstemp(prefix="fedhive-spool-", dir=directory)
            os.unlink(name)
            self._fd = fd

    def write(self, data: bytes | memoryview) -> None:
        n = len(data)
        if self.written + n > self.size:
            raise ValueError("spool overflow")
        if self._mem is not None:
            if n:
                self._mem.append((self.written, memoryview(data).cast("B")))
        else:
            assert self._fd is not None
            view = memoryview(data)
            done = 0
            while done < n:
                done += os.pwrite(self._fd, view[done:], self.written + done)
        self.written += n

    def pieces(self, offset: int, length: int, piece: int = READ_PIECE) -> Iterator[memoryview]:
        """Bytes [offset, offset+length) in pieces of at most ``piece`` bytes."""
        if self._mem is not None:
            end = offset + length
            for begin, view in self._mem:
                lo, hi = max(begin, offset), min(begin + len(view), end)
                for start in range(lo, hi, piece):
                    yield view[start - begin : min(start + piece, hi) - begin]
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
        if self._mem is not None:
            self._mem = None
            self._budget.give_back(self.size)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
