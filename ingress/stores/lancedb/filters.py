"""ImageFilter as a LanceDB where-clause (Lance SQL).

Vector and full-text search alike apply the clause as a pre-filter, so a filter never
shortens a result that admitted rows could fill. Every value is a quoted literal: the
Expr builder cannot express array containment, so this is SQL text.
"""

from __future__ import annotations

from datetime import datetime

from ingress.stores.lancedb.schema import CAPTION_STATUS_COLUMN, SOURCE_DOMAIN_COLUMN
from ingress.stores.records import ImageFilter
from ingress.stores.values import clamp_int64, utc


def _sql_text(value: str) -> str:
    # Lance's SQL reads backslashes literally; a doubled quote is the only escape.
    return "'" + value.replace("'", "''") + "'"


def _sql_timestamp(value: datetime) -> str:
    # Always with an explicit UTC offset, so that the comparison with the tz-aware column
    # does not depend on how a naive literal would be read; isoformat keeps four-digit
    # years, which Lance parses from year 1 to 9999.
    return "TIMESTAMP " + _sql_text(utc(value).isoformat(timespec="microseconds"))


def _sql_int(value: int) -> str:
    # Lance's SQL integers are int64; a larger bound is clamped rather than failing to parse.
    return str(clamp_int64(value))


def filter_sql(filters: ImageFilter | None, after_id: str | None = None) -> str | None:
    """The where-clause admitting what ``filters`` admits, and only ids after
    ``after_id`` when given; None when nothing is excluded."""
    clauses: list[str] = []
    if after_id is not None:
        clauses.append(f"id > {_sql_text(after_id)}")
    if filters is not None:
        if filters.tags_any:
            clauses.append(f"array_has_any(tags, [{', '.join(map(_sql_text, filters.tags_any))}])")
        if filters.tags_all:
            clauses.append(f"array_has_all(tags, [{', '.join(map(_sql_text, filters.tags_all))}])")
        if filters.content_types:
            clauses.append(f"content_type IN ({', '.join(map(_sql_text, filters.content_types))})")
        if filters.min_width is not None:
            clauses.append(f"width >= {_sql_int(filters.min_width)}")
        if filters.min_height is not None:
            clauses.append(f"height >= {_sql_int(filters.min_height)}")
        if filters.created_after is not None:
            clauses.append(f"created_at > {_sql_timestamp(filters.created_after)}")
        if filters.created_before is not None:
            clauses.append(f"created_at < {_sql_timestamp(filters.created_before)}")
        if filters.source_domains:
            domains = ", ".join(map(_sql_text, filters.source_domains))
            clauses.append(f"{SOURCE_DOMAIN_COLUMN} IN ({domains})")
        if filters.caption_statuses:
            statuses = ", ".join(map(_sql_text, filters.caption_statuses))
            clauses.append(f"{CAPTION_STATUS_COLUMN} IN ({statuses})")
    if not clauses:
        return None
    return " AND ".join(f"({clause})" for clause in clauses)
