"""The one exception tree of fedhive.

::

    FedhiveError                    base of everything fedhive raises on purpose
    ├── ConfigError                 a bad or misspelled setting (names the field)
    ├── PkiError                    a certificate, key or CRL is missing, damaged or wrong
    │   └── HandshakeRefused        the TLS handshake fails for a reason retrying cannot fix
    │                               (the peer's certificate is from another CA, names another host)
    ├── TaskError                   a task factory could not be loaded or misbehaved
    │   └── PrivacyBudgetExceeded   the round would take the node past its own max_epsilon
    │                               (the node declines the round, naming this)
    ├── AggregationError            a strategy cannot aggregate this round (e.g. too few
    │                               updates for its robust rule); the round fails, model untouched
    ├── TransportError              the coordinator could not be reached / the call broke
    │   └── CoordinatorGone         the run is over or the coordinator forgot this node
    ├── SecAggError                 secure aggregation could not go on (``node``: who, if known)
    │   ├── SecAggAuthError         the one crypto failure: a signature, ciphertext, share or
    │   │                           commitment did not verify (names the node that sent it)
    │   └── SecAggAbortedError      the round cannot complete (fewer than t survivors or shares,
    │                               a protocol step out of order); the global model is untouched
    └── RequestRefused              the coordinator refused a request (maps to a gRPC status)
        ├── UnknownNodeError        node id / token not recognised      -> UNAUTHENTICATED
        ├── AccessDeniedError       revoked certificate, id not allowed,
                                    token used by another identity      -> PERMISSION_DENIED
        ├── StaleRoundError         update for a round that is not open -> FAILED_PRECONDITION
        ├── NotSelectedError        node is not part of the open round  -> FAILED_PRECONDITION
        ├── DuplicateUpdateError    second update from the same node    -> ALREADY_EXISTS
        ├── LimitExceededError      a size limit was crossed            -> RESOURCE_EXHAUSTED
        ├── CoordinatorStopping     the coordinator is shutting down;
                                    reconnect later                     -> UNAVAILABLE
        ├── UnknownRunError         no such run, or the run a node joined
                                    is over (a standing node waits for
                                    the next one)                       -> NOT_FOUND
        ├── RunStateError           the run is not in a state that
                                    allows this (cancel a running run)  -> FAILED_PRECONDITION
        └── InvalidUpdateError      malformed stream, wrong shape/dtype,
                                    non-finite values, bad digest...    -> INVALID_ARGUMENT

``fedhive.common`` imports neither grpc nor torch for its errors: each ``RequestRefused``
carries the *name* of its gRPC status code; the servicer and the node transport map it at the
boundary (and map foreign errors back with ``raise ... from exc``).
"""

from __future__ import annotations


class FedhiveError(Exception):
    """Base class of every error fedhive raises on purpose."""


class ConfigError(FedhiveError):
    """A configuration value is missing, misspelled or out of range."""


class PkiError(FedhiveError):
    """A certificate, key or revocation list is missing, damaged, expired or from another CA."""


class HandshakeRefused(PkiError):
    """The TLS handshake failed for a reason that retrying cannot fix: the other side's
    certificate is not from the CA this side trusts, or does not name the host dialed."""


class TaskError(FedhiveError):
    """A task (model + data + training code) could not be loaded or failed."""


class PrivacyBudgetExceeded(TaskError):
    """A DP-SGD round would take this node past its own privacy budget (``max_epsilon``)."""


class AggregationError(FedhiveError):
    """A strategy cannot aggregate this round (its preconditions are not met)."""


class TransportError(FedhiveError):
    """The coordinator could not be reached, or a call to it broke off."""


class CoordinatorGone(TransportError):
    """The coordinator no longer knows this node (it restarted, or the run ended)."""


class SecAggError(FedhiveError):
    """Secure aggregation could not go on; ``node`` names the node at fault when one is known."""

    def __init__(self, message: str, *, node: str | None = None) -> None:
        super().__init__(message)
        self.node = node


class SecAggAuthError(SecAggError):
    """A signature, ciphertext, share or commitment did not verify (deliberately uninformative
    about *why*: one error for every crypto failure, naming only the node that sent the data)."""


class SecAggAbortedError(SecAggError):
    """The secure-aggregation round cannot complete; the global model must stay untouched."""


class RequestRefused(FedhiveError):
    """The coordinator refused a request; ``status`` names the gRPC status code it maps to."""

    status = "INVALID_ARGUMENT"


class UnknownNodeError(RequestRefused):
    status = "UNAUTHENTICATED"


class AccessDeniedError(RequestRefused):
    """The caller's certificate may not take part (revoked, not allowed, another node's token)."""

    status = "PERMISSION_DENIED"


class StaleRoundError(RequestRefused):
    status = "FAILED_PRECONDITION"


class NotSelectedError(RequestRefused):
    status = "FAILED_PRECONDITION"


class DuplicateUpdateError(RequestRefused):
    status = "ALREADY_EXISTS"


class LimitExceededError(RequestRefused):
    status = "RESOURCE_EXHAUSTED"


class InvalidUpdateError(RequestRefused):
    status = "INVALID_ARGUMENT"


class CoordinatorStopping(RequestRefused):
    """The coordinator is stopping (SIGTERM, Ctrl-C): the run is not over; a node backs off and
    reconnects until a restarted coordinator resumes the run."""

    status = "UNAVAILABLE"


class UnknownRunError(RequestRefused):
    """No run with this id is known, or the run a node joined is over (its coordinator moved on
    to the next run of the queue, or has none)."""

    status = "NOT_FOUND"


class RunStateError(RequestRefused):
    """The run is not in a state that allows the action (only a queued run is cancelled)."""

    status = "FAILED_PRECONDITION"


class RunNameTakenError(RequestRefused):
    """A run's name is taken by a run with other settings (a name is one run's, for good)."""

    status = "ALREADY_EXISTS"


REFUSALS: dict[str, type[RequestRefused]] = {
    cls.__name__: cls
    for cls in (
        UnknownNodeError,
        AccessDeniedError,
        StaleRoundError,
        NotSelectedError,
        DuplicateUpdateError,
        LimitExceededError,
        InvalidUpdateError,
        CoordinatorStopping,
        UnknownRunError,
        RunStateError,
        RunNameTakenError,
    )
}
