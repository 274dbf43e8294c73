"""Delta tables written by Spark and committed by delta-rs.

Spark writes Parquet files into the table's directory; delta-rs commits them as a new table version.
No Delta jars are needed, and any Delta reader (delta-rs, Spark with delta-spark, DuckDB) opens the result.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession


@dataclass(frozen=True)
class TableVersion:
    """One committed version of a Delta table: what an asset hands to the next."""

    name: str
    uri: str
    version: int
    rows: int


def _file_stats(path: Path) -> str:
    """Delta per-file statistics (numRecords, nullCount, min/max) from the Parquet footer."""
    meta = pq.read_metadata(path)
    stats: dict = {"numRecords": meta.num_rows, "nullCount": {}, "minValues": {}, "maxValues": {}}
    for col in range(meta.num_columns):
        name = meta.schema.column(col).path
        if "." in name:  # nested columns: leave to the reader
            continue
        nulls, lo, hi = 0, None, None
        for rg in range(meta.num_row_groups):
            s = meta.row_group(rg).column(col).statistics
            if s is None:
                lo = hi = None
                break
            nulls += s.null_count or 0
            if s.has_min_max and isinstance(s.min, (int, float)) and not isinstance(s.min, bool):
                lo = s.min if lo is None else min(lo, s.min)
                hi = s.max if hi is None else max(hi, s.max)
        stats["nullCount"][name] = nulls
        if lo is not None:
            stats["minValues"][name], stats["maxValues"][name] = lo, hi
    return json.dumps(stats)


class LakehouseResource(dg.ConfigurableResource):
    """Delta tables under `root`, one directory per table."""

    root: str

    def uri(self, table: str) -> str:
        return str(Path(self.root) / table)

    def write(self, df: DataFrame, table: str, message: str, mode: str = "overwrite",
              **commit_info: str) -> TableVersion:
        """Commit `df` as a new Delta version: `overwrite` replaces the content, `append` adds to it.

        Older versions stay readable; a failure before the commit leaves only unreferenced files.
        """
        table_dir = Path(self.uri(table))
        batch = f"batch-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        df.write.mode("error").parquet(str(table_dir / batch))  # Spark Connect knows "error", not "errorifexists"
        files = sorted((table_dir / batch).glob("*.parquet"))
        now_ms = int(time.time() * 1000)
        actions = [
            AddAction(f"{batch}/{f.name}", f.stat().st_size, {}, now_ms, True, _file_stats(f))
            for f in files
        ]
        props = CommitProperties(custom_metadata={"message": message, **commit_info})
        if (table_dir / "_delta_log").exists():
            dt = DeltaTable(str(table_dir))
            dt.create_write_transaction(
                actions, mode=mode, schema=Schema.from_arrow(pq.read_schema(files[0])),
                commit_properties=props,
            )
        else:
            create_table_with_add_actions(
                str(table_dir), Schema.from_arrow(pq.read_schema(files[0])), actions, mode="append",
                commit_properties=props,
            )
        return self.latest(table)

    def read(self, spark: SparkSession, table: TableVersion | str, version: int | None = None) -> DataFrame:
        """A Spark DataFrame of one table version (the latest when none is given)."""
        if isinstance(table, TableVersion):
            table, version = table.name, table.version
        dt = DeltaTable(self.uri(table), version=version)
        return spark.read.parquet(*dt.file_uris())

    def latest(self, table: str) -> TableVersion | None:
        uri = self.uri(table)
        if not (Path(uri) / "_delta_log").exists():
            return None
        dt = DeltaTable(uri)
        rows = pa.table(dt.get_add_actions(flatten=True))["num_records"].to_pylist()
        return TableVersion(table, uri, dt.version(), sum(rows))
