"""``--help`` text for the CLIs: defaults read from the config models, settings that only the TOML
file sets, and docstrings without their reStructuredText markup."""

from __future__ import annotations

import argparse
import re
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

WIDTH = 78
_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")


def default_of(model: type[BaseModel], field: str) -> Any:
    info = model.model_fields[field]
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return None


def show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict | tuple | list) and not value:
        return "none"
    return str(value)


def dflt(model: type[BaseModel], field: str) -> str:
    """``(default X)`` for ``field`` of ``model``."""
    return f"(default {show(default_of(model, field))})"


def toml_only(model: type[BaseModel], flagged: Iterable[str]) -> str:
    """An epilog naming the settings of ``model`` that no flag sets, with their defaults."""
    rest = [name for name in model.model_fields if name not in set(flagged)]
    items = ", ".join(f"{name} ({show(default_of(model, name))})" for name in rest)
    return textwrap.fill(
        f"Settings only in the TOML file (--config FILE), with their defaults: {items}. "
        "Flags override the file.",
        width=WIDTH,
    )


def plain(doc: str | None) -> str:
    """A docstring as help text: ``code`` -> `code`, :role:`~a.b.c` -> `c`, ``text::`` ->
    ``text:``, a ``::`` line dropped."""
    text = doc or ""
    text = _ROLE.sub(lambda m: f"`{m.group(1).rsplit('.', 1)[-1]}`", text)
    text = text.replace("``", "`")
    text = re.sub(r"\n\s*::[ \t]*\n", "\n", text)
    return re.sub(r"::\n", ":\n", text).strip()


def add_assignments(p: argparse.ArgumentParser, flag: str, help: str) -> None:
    """A repeatable ``--flag KEY=VALUE`` option (parsed by ``config.parse_assignments``)."""
    p.add_argument(flag, action="append", default=[], metavar="KEY=VALUE", help=help)
