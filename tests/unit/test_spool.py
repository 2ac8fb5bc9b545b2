"""fedhive.server.spool: staged update bytes, in memory under a budget or in an unlinked file."""

from __future__ import annotations

import os

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
    if not in_memory:  # files are read in full pieces; memory keeps the written buffers' bounds
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

    assert all(0 < len(p) <= 1 << 20 for p in pieces)
    if not in_memory:
        assert [len(p) for p in pieces] == [1 << 20] * 3 + [17]
    assert b"".join(pieces) == data
    assert budget.used == 0


def test_memory_spool_takes_from_the_budget_and_gives_back_on_close():
    budget = SpoolBudget(100)

    spool = Spool(60, budget)
    used_while_open = budget.used
    spool.close()

    assert used_while_open == 60
    assert budget.used == 0


def test_spool_that_does_not_fit_the_budget_goes_to_an_unlinked_file(tmp_path):
    budget = SpoolBudget(100)
    first = Spool(60, budget, tmp_path)
    second = Spool(60, budget, tmp_path)  # 120 > 100: to a file

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
    first.close()

    second = Spool(100, budget)

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
    spool = Spool(30, budget)

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
