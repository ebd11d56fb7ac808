"""Canary cohorts: which principals a `@mode("canary")` policy is enforced for.

A canary policy (`@mode("canary") @canary("10")`) is enforced for a stable share of principals
and observed for the rest, so a new forbid meets real traffic on a few callers before all of
them. The cohort is a hash, not a draw: SHA-256 of the principal's uid (`Type::"id"`) and the
policy id, its first 8 bytes read as a fraction of 2^64, below the percentage means enforced.
The same principal is in the same cohort on every replica, after every restart and on every
request (a caller does not flip between answers); a different policy splits principals
independently (the id is in the hash); raising the percentage only adds principals to the
enforced cohort. Every decision under a bundle with canary policies records each one's cohort
(`canary` in the ledger record), and the rollout gates read each cohort apart.
"""

from __future__ import annotations

import hashlib

ENFORCED = "enforced"
OBSERVED = "observed"
_SCALE = float(1 << 64)


def position(principal_uid: str, policy_id: str) -> float:
    """Where the principal falls for this policy, uniform in [0, 1)."""
    digest = hashlib.sha256(f"{principal_uid}\x00{policy_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def cohort(principal_uid: str, policy_id: str, percent: float) -> str:
    """`enforced` for `percent` % of principals (stable by hash), `observed` for the rest."""
    return ENFORCED if position(principal_uid, policy_id) * 100 < percent else OBSERVED
