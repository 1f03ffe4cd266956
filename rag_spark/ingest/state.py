"""Where each database/API source stands between runs: its watermark, its HTTP validators, how it was read.

A watermark is kept as text in one canonical form per type so that it survives the `source_state` table, a
change of machine and of time zone, and is compared and shifted (`watermark_lag`) exactly:

- integral and decimal columns, API numbers: the number as text (`42`, `12.50`);
- floating columns: Spark's text of the double;
- `timestamp` (an instant): ISO-8601 in UTC with microseconds (`2026-11-26T13:05:52.123456+00:00`);
- `timestamp_ntz`: ISO-8601 without zone; `date`: `YYYY-MM-DD`; strings as they are.

Reading only "above the watermark" is safe against the crash between bronze's MERGE and the state's: the state is
written after bronze, so a stored watermark never exceeds what bronze holds (at worst rows are read again).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from pyspark.sql import DataFrame

from rag_spark.config import HttpSource, JdbcSource

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INTEGRAL = frozenset({"tinyint", "smallint", "int", "bigint"})


@dataclass(frozen=True)
class SourceState:
    """One `source_state` row (see rag_spark.schema.SOURCE_STATE)."""

    source_name: str
    kind: str
    source_uri: str
    identity_hash: str
    watermark: str | None = None
    watermark_type: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    validators_for: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> SourceState:
        return cls(**{f: row[f] for f in cls.__dataclass_fields__})


@dataclass
class RemoteRead:
    """What reading one database/API source gave: rows, how it was read, and the state for the next run.

    mode: "full" (everything), "incremental" (rows above `read_from`, the previous watermark less the lag) or
    "not_modified" (HTTP 304: nothing read). `cached` frames are to be unpersisted once merged."""

    docs: DataFrame
    bad: DataFrame
    uri: str
    mode: str
    rows_read: int
    state: SourceState
    read_from: str | None = None
    cached: list[DataFrame] = field(default_factory=list)

    def info(self) -> dict[str, Any]:
        """The run-info entry of this source (the `runs` table and the CLI show it)."""
        return {
            "name": self.state.source_name,
            "kind": self.state.kind,
            "mode": self.mode,
            "read_from": self.read_from,
            "rows_read": self.rows_read,
            "watermark": self.state.watermark,
        }


def identity_hash(src: JdbcSource | HttpSource) -> str:
    """A hash of what decides which rows a source yields and how they map to documents; when it changes, the
    stored watermark means nothing and the source is read in full."""
    if isinstance(src, JdbcSource):
        keys = ["url", "table", "query", "incremental_column", "id_column", "text_column", "title_column"]
    else:
        keys = [
            "url", "params", "records_field", "id_field", "title_field", "text_field", "pagination",
            "since_param", "updated_field",
        ]  # fmt: skip
    ident = {"kind": src.kind, **{k: getattr(src, k) for k in keys}}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def describe(read: dict[str, Any]) -> str:
    """One line for a human: `pg (jdbc): incremental from 2026-...: 3 rows read`."""
    how = {
        "full": "full read",
        "incremental": f"incremental from watermark {read['read_from']}",
        "not_modified": "not modified (HTTP 304)",
    }[read["mode"]]
    return f"{read['name']} ({read['kind']}): {how}, {read['rows_read']} rows read, watermark {read['watermark']}"


# -- canonical watermark values --


def comparable(value: str, wtype: str) -> Any:
    """The stored text as a value Python orders like the database does."""
    if wtype in ("number", "double", "float") or wtype.startswith("decimal") or wtype in _INTEGRAL:
        return Decimal(value)
    if wtype in ("timestamp", "timestamp_ntz"):
        return datetime.fromisoformat(value)
    if wtype == "date":
        return date.fromisoformat(value)
    return value


def larger(a: str | None, b: str | None, wtype: str) -> str | None:
    """The larger of two canonical watermarks (None is below everything)."""
    if a is None or b is None:
        return a if b is None else b
    return a if comparable(a, wtype) >= comparable(b, wtype) else b


def shifted(value: str, wtype: str, lag: float) -> str:
    """`value` less `lag` (seconds for timestamps, days for dates, units for numbers), in canonical form.

    Raises:
        ValueError: for a lag on a string watermark, or a stored value that does not parse as its type.
    """
    try:
        if not lag:
            comparable(value, wtype)  # validates what came from the table before it reaches a query
            return value
        if wtype in _INTEGRAL:
            return str(int(Decimal(value)) - int(lag))
        if wtype in ("double", "float") or wtype.startswith("decimal"):
            return str(Decimal(value) - Decimal(str(lag)))
        if wtype in ("timestamp", "timestamp_ntz"):
            return (datetime.fromisoformat(value) - timedelta(seconds=lag)).isoformat(timespec="microseconds")
        if wtype == "date":
            return (date.fromisoformat(value) - timedelta(days=int(lag))).isoformat()
    except (InvalidOperation, ValueError) as err:
        raise ValueError(f"stored watermark {value!r} is not a valid {wtype}: {err}") from None
    raise ValueError(f"watermark_lag cannot apply to a {wtype} column")


def micros_to_iso(micros: int) -> str:
    """Microseconds since the epoch (Spark's `unix_micros`) -> canonical UTC timestamp text."""
    return (EPOCH + timedelta(microseconds=micros)).isoformat(timespec="microseconds")
