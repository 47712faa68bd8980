"""Checks of send times against rate-limit windows, shared by the ledger's tests."""

from __future__ import annotations


def assert_strict(starts, limits) -> None:
    """No half-open interval [a, a + W) holds more than L of ``starts``, for every window."""
    starts = sorted(starts)
    for limit, seconds in limits.windows():
        for older, newer in zip(starts, starts[limit:], strict=False):
            assert newer >= older + seconds, (limit, seconds, older, newer)
