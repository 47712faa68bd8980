"""The attempts table seen from the rate-limit ledger: when each account's sends started."""

from __future__ import annotations

from common.enums import SEND_OUTCOMES

_SEND_OUTCOMES = sorted(SEND_OUTCOMES)  # attempts that began an SMTP transaction (took a slot)


def send_starts(conn, account_id: str | None, since: float) -> list[float]:
    """Start times of the account's sends at or after ``since``, oldest first (ledger rebuild)."""
    placeholders = ", ".join("?" for _ in _SEND_OUTCOMES)
    rows = conn.execute(
        f"SELECT ts FROM attempts WHERE account_id IS ? AND ts >= ? "
        f"AND outcome IN ({placeholders}) ORDER BY ts",
        (account_id, since, *_SEND_OUTCOMES),
    )
    return [row["ts"] for row in rows]
