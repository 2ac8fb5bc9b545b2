"""Coordinator pipeline stages for tests/integration/test_pipeline.py (imported by path)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fedhive.common.api.hooks import Block


class Half:
    """Commit half the round's step: the delta scaled by 0.5."""

    name = "half"

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            yield Block(b.start, b.values * 0.5)


class FailOnce:
    """Fails on the first round's result it sees (``calls`` counts them), then passes."""

    name = "fail-once"
    calls = 0

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        FailOnce.calls += 1
        if FailOnce.calls == 1:
            raise RuntimeError("fail-once: the first aggregate")
        yield from blocks


class CrashOnLarge:
    """A buggy stage: divides by zero on a delta above 2.5 (the constant task's n2 adds 3)."""

    name = "crash-on-large"

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        for b in blocks:
            if float(b.values.max()) > 2.5:
                _ = 1 / 0
            yield b


class Words:
    """A stage on SecAgg+ words: the nodes', never the coordinator's."""

    name = "words"
    domain = "words"

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        yield from blocks


NOT_A_STAGE = 42
