"""Stages named by import path in the pipeline tests."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from fedhive.common.api.hooks import Block


class FloatStage:
    name = "float-pass"
    domain = "float"

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        yield from blocks


class WordStage:
    name = "word-pass"
    domain = "words"

    def transform(self, blocks: Iterable[Block]) -> Iterator[Block]:
        yield from blocks


class OddDomain(FloatStage):
    domain = "complex"


class NotAStage:
    pass
