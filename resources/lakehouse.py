"""Delta tables written by Spark and committed by delta-rs.

Spark writes Parquet files into the table's directory; delta-rs commits them as a new table version.
No Delta jars are needed, and any Delta reader (delta-rs, Spark with delta-spark, DuckDB) opens the result.

With an `s3://bucket/prefix` root the tables live in object storage. Spark here has no S3 connector
(hadoop-aws cannot be fetched), so the driver carries the files: Spark writes Parquet into `staging_dir`,
the driver uploads it and delta-rs commits with the bucket's storage options; to read, delta-rs lists
the version's files and the driver fetches them into `staging_dir`'s cache (immutable files: each is
fetched once) for Spark. Executors on other machines need `staging_dir` on a shared filesystem.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable, Schema
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import AddAction, CommitProperties, create_table_with_add_actions
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql.pandas.types import from_arrow_schema

from llm_assets import storage
from resources.settings import ObjectStoreSettings


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


class LakehouseResource(ObjectStoreSettings):
    """Delta tables under `root` (a directory, or `s3://bucket/prefix`), one directory per table."""

    root: str
    staging_dir: str = ""
    """Local scratch for an s3:// root (Spark's output before upload, fetched files); empty: the temp dir."""

    def uri(self, table: str) -> str:
        return f"{self.root.rstrip('/')}/{table}" if self.remote else str(Path(self.root) / table)

    @property
    def remote(self) -> bool:
        return storage.is_remote(self.root)

    def storage_options(self) -> dict[str, str] | None:
        """delta-rs options for the root's object store (None for a local root)."""
        return self.object_store().delta_options() if self.remote else None

    def delta_table(self, table: str, version: int | None = None) -> DeltaTable:
        return DeltaTable(self.uri(table), version=version, storage_options=self.storage_options())

    def _staging(self, *parts: str) -> Path:
        return Path(self.staging_dir or Path(tempfile.gettempdir()) / "llmops-lakehouse").joinpath(*parts)

    def write(self, df: DataFrame, table: str, message: str, mode: str = "overwrite",
              **commit_info: str) -> TableVersion:
        """Commit `df` as a new Delta version: `overwrite` replaces the content, `append` adds to it.

        Older versions stay readable; a failure before the commit leaves only unreferenced files.
        """
        batch = f"batch-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        out_dir = self._staging("out", table, batch) if self.remote else Path(self.uri(table)) / batch
        try:
            df.write.mode("error").parquet(str(out_dir))  # Spark Connect knows "error", not "errorifexists"
            files = sorted(out_dir.glob("*.parquet"))
            now_ms = int(time.time() * 1000)
            actions = [
                AddAction(f"{batch}/{f.name}", f.stat().st_size, {}, now_ms, True, _file_stats(f))
                for f in files
            ]
            if self.remote:
                fs = self.object_store().filesystem()
                for f in files:
                    storage.upload_file(f, fs, storage.bucket_path(f"{self.uri(table)}/{batch}/{f.name}"))
            schema = Schema.from_arrow(pq.read_schema(files[0]))
        finally:
            if self.remote:
                shutil.rmtree(out_dir, ignore_errors=True)
        props = CommitProperties(custom_metadata={"message": message, **commit_info})
        if self.latest(table) is not None:
            dt = self.delta_table(table)
            if mode == "append":
                schema = _add_new_columns(dt, schema)
            dt.create_write_transaction(actions, mode=mode, schema=schema, commit_properties=props)
        else:
            create_table_with_add_actions(self.uri(table), schema, actions, mode="append",
                                          commit_properties=props, storage_options=self.storage_options())
        return self.latest(table)

    def read(self, spark: SparkSession, table: TableVersion | str, version: int | None = None) -> DataFrame:
        """A Spark DataFrame of one table version (the latest when none is given)."""
        if isinstance(table, TableVersion):
            table, version = table.name, table.version
        dt = self.delta_table(table, version)
        files = dt.file_uris() if not self.remote else self._fetch(table, dt.file_uris())
        # The table's schema, not one file's: files written before a column was added lack it (read as null).
        return spark.read.schema(from_arrow_schema(pa.schema(dt.schema().to_arrow()))).parquet(*files)

    def _fetch(self, table: str, uris: list[str]) -> list[str]:
        """Local copies of a remote version's files (data files never change once written: fetched once)."""
        fs, prefix = self.object_store().filesystem(), self.uri(table) + "/"
        local = []
        for uri in uris:
            path = self._staging("cache", table, uri.removeprefix(prefix))
            if not path.exists():
                storage.download_file(fs, storage.bucket_path(uri), path)
            local.append(str(path))
        return local

    def latest(self, table: str) -> TableVersion | None:
        if not self.remote and not (Path(self.uri(table)) / "_delta_log").exists():
            return None
        try:
            dt = self.delta_table(table)
        except TableNotFoundError:
            return None
        rows = pa.table(dt.get_add_actions(flatten=True))["num_records"].to_pylist()
        return TableVersion(table, self.uri(table), dt.version(), sum(rows))


def _add_new_columns(dt: DeltaTable, schema: Schema) -> Schema:
    """An append that brings columns the table lacks adds them first (nullable; older rows read null)."""
    known = {f.name for f in dt.schema().fields}
    new = [f for f in schema.fields if f.name not in known]
    if new:
        dt.alter.add_columns(new)
    return dt.schema()
