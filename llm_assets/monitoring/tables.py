"""The monitoring Delta tables: logged requests and feedback ingested from the gateway, and read back.

Writes go through Spark and the lakehouse resource (one Delta version per batch); reads of these small
tables use delta-rs into pandas. Rows whose request id is already stored are dropped on ingest, so a log
read twice (after a rotation, or a run that failed after its commit) never counts a request twice.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
from deltalake import DeltaTable

REQUESTS, FEEDBACK, QUARANTINE = "served_requests", "served_feedback", "served_quarantine"


def _schema(table: str):
    from pyspark.sql import types as T

    s, i, d, ts, b = T.StringType(), T.IntegerType(), T.DoubleType(), T.TimestampType(), T.BooleanType()
    cols = {
        REQUESTS: [("request_id", s), ("timestamp", ts), ("endpoint", s), ("model", s), ("model_version", s),
                   ("prompt_name", s), ("prompt_version", s), ("user", s), ("replica", s), ("status", i),
                   ("latency_ms", d), ("ttft_ms", d), ("prompt_tokens", i), ("completion_tokens", i),
                   ("retries", i), ("stream", b), ("error", s), ("prompt", s), ("response", s), ("context", s),
                   ("batch_id", s), ("ingested_at", ts)],
        FEEDBACK: [("request_id", s), ("timestamp", ts), ("model", s), ("model_version", s), ("prompt_version", s),
                   ("rating", i), ("thumbs", s), ("comment", s), ("batch_id", s), ("ingested_at", ts)],
        QUARANTINE: [("source", s), ("line", s), ("reason", s), ("batch_id", s), ("ingested_at", ts)],
    }[table]
    return T.StructType([T.StructField(name, kind, True) for name, kind in cols])


def read(root: str | Path, table: str, columns: list[str] | None = None) -> pd.DataFrame:
    """The latest version of a monitoring table as pandas (empty, with no columns, when it does not exist)."""
    uri = Path(root) / table
    if not (uri / "_delta_log").is_dir():
        return pd.DataFrame(columns=columns or [])
    df = DeltaTable(str(uri)).to_pandas(columns=columns)
    for col in ("timestamp", "ingested_at"):
        if col in df:
            df[col] = pd.to_datetime(df[col], utc=True)
    return df


_KEYS = {REQUESTS: ("request_id",), FEEDBACK: ("request_id", "timestamp")}


def _key(row: dict, cols: tuple[str, ...]) -> tuple:
    return tuple(pd.Timestamp(row[c]).value if c == "timestamp" else row[c] for c in cols)


def known_keys(root: str | Path, table: str, since: datetime) -> set[tuple]:
    """Keys (request id; for feedback also its timestamp) of rows stored in `table` from `since` on."""
    # Filtered after reading: a pushed-down timestamp filter on Spark-written files matched nothing here.
    stored = read(root, table, [*dict.fromkeys((*_KEYS[table], "timestamp"))])
    if stored.empty:
        return set()
    recent = stored[stored["timestamp"] >= pd.Timestamp(since)]
    return {_key(r, _KEYS[table]) for r in recent.to_dict("records")}


def append(spark, lakehouse, table: str, rows: list[dict], batch_id: str, message: str):
    """Append `rows` to `table`, less those already stored (and repeats within `rows`, for keyed tables);
    returns (TableVersion, or None when nothing was new; the rows written)."""
    if rows and table in _KEYS:
        seen = known_keys(lakehouse.root, table, min(r["timestamp"] for r in rows))
        fresh = {}
        for r in rows:
            key = _key(r, _KEYS[table])
            if key not in seen:
                fresh.setdefault(key, r)
        rows = list(fresh.values())
    if not rows:
        return None, []
    now = datetime.now(timezone.utc)
    schema = _schema(table)
    data = [tuple({**r, "batch_id": batch_id, "ingested_at": now}.get(f.name) for f in schema.fields) for r in rows]
    df = spark.createDataFrame(data, schema).coalesce(1)
    return lakehouse.write(df, table, message, mode="append", batch_id=batch_id), rows


def append_frame(spark, lakehouse, table: str, frame: pd.DataFrame, message: str, **commit_info: str):
    """Append a small pandas frame of plain columns (str, numbers, bools, UTC datetimes) to `table`."""
    frame = frame.copy()
    for col in frame.columns:
        if isinstance(frame[col].dtype, pd.DatetimeTZDtype):  # Spark takes naive datetimes in its UTC session
            frame[col] = frame[col].dt.tz_convert("UTC").dt.tz_localize(None)
    return lakehouse.write(spark.createDataFrame(frame).coalesce(1), table, message, mode="append", **commit_info)
