"""Finding the outside components some tests need, and skipping or failing when one is absent.

A test that needs PostgreSQL, SoftHSM2 or another outside component calls `require_service`. On a user's
bare machine the test is skipped with the reason. CI sets ``CARBON_GATEWAY_REQUIRE_SERVICES=1``, which turns
the skip into a failure, so CI never skips such a test.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_SERVICES = os.environ.get("CARBON_GATEWAY_REQUIRE_SERVICES") == "1"


def require_service(available: bool, reason: str) -> None:
    """Skip (or, under CARBON_GATEWAY_REQUIRE_SERVICES=1, fail) the calling test if not ``available``."""
    if available:
        return
    if REQUIRE_SERVICES:
        pytest.fail(f"required service missing (CARBON_GATEWAY_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)
