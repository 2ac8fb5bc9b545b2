"""The coordinator's status page and Prometheus metrics: ``[status]`` in the server's TOML.

Off unless given (``status = None``). Bound to loopback unless told otherwise; bound anywhere else
it must be protected by a bearer token (``token_file``), and should be served over HTTPS
(``tls_cert`` + ``tls_key``) so the token does not travel in clear.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from fedhive.common.errors import ConfigError

MIN_TOKEN_CHARS = 16  # a shorter bearer token is guessable: refused
MAX_TOKEN_CHARS = 4096


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


class StatusConfig(BaseModel):
    """``[status]``: where the status page and ``/metrics`` listen, and how they are protected."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False)

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8080, ge=0, le=65535)  # 0: a free port (logged at start)
    token_file: Path | None = None  # a bearer token, required when host is not loopback
    tls_cert: Path | None = None  # HTTPS: certificate and key (PEM), both or neither
    tls_key: Path | None = None
    page: bool = True  # serve the web page and its /api/ (False: /metrics only)
    # how many of a run's latest rounds the page reads and shows
    max_rounds_shown: int = Field(default=500, ge=1, le=100_000)

    @model_validator(mode="after")
    def _check(self) -> StatusConfig:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("[status] tls_cert and tls_key go together: give both or neither")
        if self.token_file is None and not is_loopback(self.host):
            raise ValueError(
                f"[status] host = {self.host!r} would expose the status page and metrics beyond "
                "this machine without protection: give token_file (--status-token-file, a file "
                f"holding a bearer token of at least {MIN_TOKEN_CHARS} characters; HTTPS with "
                "tls_cert and tls_key too), or keep host = '127.0.0.1'"
            )
        return self

    @property
    def exposed(self) -> bool:
        return not is_loopback(self.host)

    def read_token(self) -> str | None:
        """The bearer token from ``token_file`` (None: no token), checked."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"[status] token_file {self.token_file}: {exc}") from exc
        if not MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS or any(c.isspace() for c in token):
            raise ConfigError(
                f"[status] token_file {self.token_file} must hold one token of "
                f"{MIN_TOKEN_CHARS} to {MAX_TOKEN_CHARS} characters without spaces "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return token
