"""Unit-test set-up: one hypothesis profile for every property test below this folder."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

# No deadline: the first call into torch or protobuf can take far longer than the default 200 ms.
# No example database: a test run leaves nothing behind in the checkout.
settings.register_profile(
    "fedhive-unit",
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("fedhive-unit")
