"""Objects named by import path, ``package.module:name`` (tasks, strategies, Flower apps)."""

from __future__ import annotations

import importlib
from typing import Any

from fedhive.common.errors import FedhiveError


def import_object(
    path: str, what: str, error: type[FedhiveError], hint: str = "", form: str = "factory"
) -> Any:
    """The attribute ``name`` of ``package.module`` (None when the module lacks it); a malformed
    path or a module that cannot be imported is ``error`` naming ``what``."""
    module_name, _, attr = str(path).partition(":")
    if not module_name or not attr:
        raise error(f"{what} must look like 'package.module:{form}', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise error(f"cannot import {what} module {module_name!r}: {exc}{hint}") from exc
    return getattr(module, attr, None)
