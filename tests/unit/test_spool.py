"""fedhive.server.spool: staged update bytes, in memory under a budget or in an unlinked file."""

from __future__ import annotations

import os
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedhive.server.spool import Spool, SpoolBudget


def fill(spool: Spool, data: bytes, write_size: int) -> None:
    for start in range(0, len(data), write_size):
        spool.write(memoryview(data)[start : start + write_size])


def read_back(spool: Spool, offset: int, length: int, piece: int) -> list[bytes]:
    # In file mode every piece is a view of one reused buffer: copy each before the next.
    return [bytes(p) for p in spool.pieces(offset, length, piece)]


@given(
    data=st.binary(max_size=2000),
    write_size=st.integers(1, 300),
    piece=st.integers(1, 500),
    in_memory=st.booleans(),
    window=st.tuples(st.integers(0, 2000), st.integers(0, 2000)),
)
def test_spool_gives_back_exactly_the_bytes_written_in_pieces(
    data, write_size, piece, in_memory, window
):
    budget = SpoolBudget(len(data) if in_memory else 0)
    spool = Spool(len(data), budget)
    offset = min(window[0], len(data))
    length = min(window[1], len(data) - offset)

    try:
        fill(spool, data, write_size)
        whole = read_back(spool, 0, len(data), piece)
        part = read_back(spool, offset, length, piece)
    finally:
        spool.close()

    assert spool.written == len(data)
    assert b"".join(whole) == data
    assert all(0 < len(p) <= piece for p in whole)
    assert len(whole) == -(-len(data) // piece)
    assert b"".join(part) == data[offset : offset + length]
    assert budget.used == 0


@pytest.mark.parametrize("in_memory", [True, False], ids=["memory", "file"])
def test_spool_round_trip_of_a_larger_payload(tmp_path, in_memory):
    data = os.urandom(3 * (1 << 20) + 17)
    budget = SpoolBudget(len(data) if in_memory else 0)
    spool = Spool(len(data), budget, tmp_path)

    fill(spool, data, 65536 + 3)
    pieces = read_back(spool, 0, len(data), 1 << 20)
    spool.close()

    assert [len(p) for p in pieces] == [1 << 20] * 3 + [17]
    assert b"".join(pieces) == data
    assert budget.used == 0


def test_memory_spool_takes_from_the_budget_at_its_first_write_and_gives_back_on_close():
    budget = SpoolBudget(100)
    spool = Spool(60, budget)
    used_before_writing = budget.used

    spool.write(b"x")
    used_while_open = budget.used
    spool.close()

    assert used_before_writing == 0
    assert used_while_open == 60
    assert budget.used == 0


def test_spool_that_does_not_fit_the_budget_goes_to_an_unlinked_file(tmp_path):
    budget = SpoolBudget(100)
    first = Spool(60, budget, tmp_path)
    second = Spool(60, budget, tmp_path)  # 120 > 100: to a file

    first.write(b"y")
    second.write(b"x" * 60)
    used_with_both = budget.used
    files_while_open = os.listdir(tmp_path)
    second.close()
    first.close()

    assert used_with_both == 60
    assert files_while_open == []  # the temp file is unlinked at once
    assert budget.used == 0


def test_budget_comes_back_for_the_next_spool():
    budget = SpoolBudget(100)
    first = Spool(100, budget)
    first.write(b"x")
    first.close()

    second = Spool(100, budget)
    second.write(b"x")

    assert second.in_memory
    assert budget.used == 100
    second.close()
    assert budget.used == 0


def test_file_spool_leaves_the_budget_alone():
    budget = SpoolBudget(0)

    spool = Spool(10, budget)
    spool.write(b"0123456789")
    spool.close()

    assert budget.used == 0


@pytest.mark.parametrize("limit", [100, 0], ids=["memory", "file"])
def test_close_twice_gives_back_once(limit):
    budget = SpoolBudget(limit)
    other = Spool(20, budget)  # holds 20 of the budget in memory mode
    other.write(b"o")
    spool = Spool(30, budget)
    spool.write(b"s")

    spool.close()
    spool.close()

    assert budget.used == (20 if limit else 0)
    other.close()
    assert budget.used == 0


@pytest.mark.parametrize("limit", [100, 0], ids=["memory", "file"])
def test_write_beyond_the_size_is_refused(limit):
    spool = Spool(8, SpoolBudget(limit))
    spool.write(b"abcdef")

    with pytest.raises(ValueError, match="spool overflow"):
        spool.write(b"ghi")

    assert spool.written == 6
    spool.write(b"gh")
    assert b"".join(read_back(spool, 0, 8, 3)) == b"abcdefgh"
    spool.close()


@pytest.mark.parametrize("limit", [0, 10], ids=["file", "memory"])
def test_empty_spool(limit):
    spool = Spool(0, SpoolBudget(limit))

    pieces = read_back(spool, 0, 0, 4)
    spool.close()

    assert pieces == []


def test_waiting_spool_gets_memory_when_another_gives_back():
    budget = SpoolBudget(100)
    first = Spool(80, budget)
    first.write(b"a" * 80)
    second = Spool(80, budget, wait_s=30.0)
    closer = threading.Timer(0.2, first.close)

    closer.start()
    started = time.monotonic()
    second.write(b"b" * 80)  # blocks until first is closed
    waited = time.monotonic() - started
    closer.join()

    assert second.in_memory
    assert 0.1 < waited < 25
    assert b"".join(read_back(second, 0, 80, 50)) == b"b" * 80
    second.close()
    assert budget.used == 0


def test_waiting_spool_goes_to_a_file_after_its_wait(tmp_path):
    budget = SpoolBudget(100)
    first = Spool(80, budget)
    first.write(b"a")
    second = Spool(80, budget, tmp_path, wait_s=0.05)

    second.write(b"b" * 80)

    assert second.in_memory is False
    assert budget.used == 80
    assert b"".join(read_back(second, 0, 80, 50)) == b"b" * 80
    second.close()
    first.close()
    assert budget.used == 0


def test_update_larger_than_the_whole_budget_does_not_wait(tmp_path):
    budget = SpoolBudget(100)
    spool = Spool(101, budget, tmp_path, wait_s=60.0)

    started = time.monotonic()
    spool.write(b"z")

    assert spool.in_memory is False
    assert time.monotonic() - started < 5
    spool.close()


def test_reading_beyond_what_was_written_is_refused():
    spool = Spool(10, SpoolBudget(100))
    spool.write(b"12345")

    with pytest.raises(ValueError, match=r"holds 5 bytes"):
        list(spool.pieces(3, 4))
    spool.close()


def test_write_after_close_is_refused():
    spool = Spool(10, SpoolBudget(100))
    spool.close()

    with pytest.raises(ValueError, match="closed"):
        spool.write(b"x")


def test_memory_buffers_are_pooled_and_reused_by_the_next_spool():
    budget = SpoolBudget(100)
    first = Spool(60, budget)
    first.write(b"a" * 60)
    first.close()
    pooled_after_first = budget.pooled

    second = Spool(60, budget)
    second.write(b"b" * 10)
    pooled_while_second_open = budget.pooled
    data = b"".join(read_back(second, 0, 10, 4))
    second.close()

    assert pooled_after_first == 60
    assert pooled_while_second_open == 0  # the pooled buffer was taken, not a new one
    assert data == b"b" * 10
    assert budget.pooled == 60
    assert budget.used == 0


def test_a_piece_kept_after_close_keeps_its_buffer_out_of_the_pool():
    budget = SpoolBudget(100)
    spool = Spool(8, budget)
    spool.write(b"abcdefgh")
    kept = next(spool.pieces(0, 8))

    spool.close()
    reused = Spool(8, budget)
    reused.write(b"XXXXXXXX")

    assert bytes(kept) == b"abcdefgh"  # not overwritten by the next spool
    reused.close()
    assert budget.used == 0


def test_pool_never_holds_more_than_the_limit_with_mixed_sizes():
    budget = SpoolBudget(100)
    for size in (60, 30, 90, 40, 100):
        spool = Spool(size, budget)
        spool.write(b"x")

        assert budget.used + budget.pooled <= 100
        spool.close()
        assert budget.pooled <= 100
    budget.clear()
    assert budget.pooled == 0
