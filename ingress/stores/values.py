"""Value normalisation every backend applies the same way: instants in UTC, integers
within int64.

The stores keep one meaning per value whatever the backend: a timestamp is one instant
(read back in UTC), and an integer bound beyond what the backend can compare is clamped
rather than refused, so that a filter with a huge bound still admits what it means.
"""

from __future__ import annotations

from datetime import datetime, timezone

# Both backends compare integers as signed 64-bit (Lance SQL, Weaviate INT).
INT64_MAX = 2**63 - 1


def utc(dt: datetime) -> datetime:
    """The same instant in ``datetime.timezone.utc``; a naive datetime is taken as UTC.

    What each backend hands back differs (Arrow's zoneinfo UTC, botocore's tzutc, a
    naive value from the caller); converting every one keeps stored and returned instants
    in one timezone, so that they compare and serialise alike.
    """
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)


def clamp_int64(value: int) -> int:
    """``value`` clamped to [-INT64_MAX, INT64_MAX]: a larger bound admits the same rows
    (no stored int64 lies beyond it) instead of failing to parse or being refused."""
    return max(-INT64_MAX, min(int(value), INT64_MAX))
