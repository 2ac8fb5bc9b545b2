"""Logging set-up shared by the CLIs (rich on a terminal, plain unwrapped lines otherwise)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", prefix: str = "") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler
    if sys.stderr.isatty():
        from rich.console import Console
        from rich.highlighter import NullHighlighter
        from rich.logging import RichHandler

        # on stderr (rich's default console is stdout's), without highlighting: it coloured
        # fragments of peer addresses (ipv4:127.0.0.1:58430) and ids
        handler = RichHandler(
            console=Console(stderr=True, highlight=False),
            show_path=False,
            rich_tracebacks=False,
            markup=False,
            highlighter=NullHighlighter(),
        )
        handler.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
        )
    root.addHandler(handler)
    root.setLevel(level.upper())
