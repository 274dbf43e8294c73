"""Raw text acquisition: files, JSONL or Parquet into one DataFrame of documents, bad inputs set aside.

A source is a directory (read recursively), a glob, or a `.jsonl` / `.parquet` file with a `text`
field and optional `id` / `source`. Spark lists and reads the files (`binaryFile`), so the same code
reads HDFS or S3 on a cluster. Bytes are decoded in a pandas UDF; a file is rejected with a rule
name rather than repaired:

| rule               | when                                                                    |
|--------------------|-------------------------------------------------------------------------|
| `oversized`        | more than `max_bytes`; its content is never read (Spark pushes the      |
|                    | `length` filter into the file scan)                                     |
| `empty`            | zero bytes (Spark's scan skips these; found from the file listing), or  |
|                    | only whitespace                                                         |
| `binary`           | contains NUL bytes                                                      |
| `invalid_utf8`     | not valid UTF-8. Quarantined, not decoded with replacement characters:   |
|                    | guessing a legacy code page silently corrupts text, and the quarantine  |
|                    | row shows which files need a re-encode at the source                    |
| `malformed_record` | a JSONL line that is not a JSON object                                  |
| `duplicate_record` | the same text at the same source twice (keeps `doc_id` unique)          |

Spark's file listing skips names starting with `_` or `.` (its convention for `_SUCCESS`, `.crc`
and other bookkeeping files); such files in a source directory are not documents to it.

`doc_id` hashes the document's path relative to its source root with its content hash, so the same
files give the same ids wherever the source is mounted (a laptop, a cluster, a test's tmp dir);
`source` keeps the full URI.

This module also defines the quarantine record every data step writes (`quarantine_rows`).
"""

from __future__ import annotations

import glob as globlib
import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

TEXT_EXTENSIONS = (".md", ".rst", ".txt", ".html")
# Hadoop's GlobFilter is case-sensitive and matches the file name only.
TEXT_GLOB = "*.{md,MD,markdown,rst,RST,txt,TXT,html,htm,HTML}"
# Machine-written package metadata, not prose.
_NOT_DOCS = {"top_level.txt", "entry_points.txt", "dependency_links.txt", "namespace_packages.txt",
             "SOURCES.txt", "requires.txt", "RECORD", "WHEEL", "INSTALLER", "REQUESTED"}
_GLOB_CHARS = set("*?[]{}")
MAX_BYTES = 2_000_000
MAX_FILES = 1500
PREVIEW_CHARS = 200

RAW_COLUMNS = ["doc_id", "source", "kind", "text", "content_hash", "n_bytes", "ingested_at"]
QUARANTINE_COLUMNS = ["doc_id", "source", "step", "rule", "reason", "text_preview", "quarantined_at"]


@dataclass
class StepResult:
    """What a data step produces: the rows it keeps and the rows it rejects (quarantine shape)."""

    kept: DataFrame
    rejected: DataFrame
    _cached: tuple[DataFrame, ...] = ()

    def release(self) -> None:
        """Drop the cached intermediate frames once both outputs are written."""
        for df in self._cached:
            df.unpersist()


def quarantine_rows(df: DataFrame, step: str, rule: Column | str, reason: Column | str,
                    text: Column | str | None = "text") -> DataFrame:
    """Rejected rows in the one quarantine schema: doc_id, source, step, rule, reason, preview, time."""
    as_col = lambda c: F.col(c) if isinstance(c, str) else c  # noqa: E731
    preview = F.lit(None).cast("string") if text is None else F.substring(as_col(text), 1, PREVIEW_CHARS)
    return df.select(
        F.col("doc_id").cast("string").alias("doc_id"),
        F.col("source").cast("string").alias("source"),
        F.lit(step).alias("step"),
        as_col(rule).cast("string").alias("rule"),
        as_col(reason).cast("string").alias("reason"),
        preview.alias("text_preview"),
        F.current_timestamp().alias("quarantined_at"),
    )


# ---------------------------------------------------------------- where the files are

def default_source_files(max_files: int = MAX_FILES, extra_roots: tuple[str, ...] = ("/usr/share/doc",)) -> list[str]:
    """The demo corpus: docs, READMEs, METADATA and LICENSE files of the running interpreter's packages.

    Sorted by path within each root (site-packages first), capped at `max_files`, so every run on
    the same install reads the same files.
    """
    roots = [sysconfig.get_paths()["purelib"], *extra_roots]
    found: list[str] = []
    for root in roots:
        if not os.path.isdir(root):
            continue
        in_root = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for name in filenames:
                path = os.path.join(dirpath, name)
                if _is_doc_name(name) and not (_GLOB_CHARS & set(path)) and os.path.isfile(path):
                    in_root.append(path)
        found.extend(sorted(in_root))
    return found[:max_files]


def _is_doc_name(name: str) -> bool:
    if name in _NOT_DOCS or name.startswith(("_", ".")):  # Spark skips `_x` and `.x` as hidden files
        return False
    return name.lower().endswith(TEXT_EXTENSIONS) or name == "METADATA" or name.startswith("LICENSE")


def source_kind(path: str) -> str:
    """A short label for where a document came from: md, rst, txt, html, metadata, license, jsonl..."""
    name = path.rsplit("/", 1)[-1].split("#", 1)[0]
    lower = name.lower()
    if lower.startswith("license") or lower.startswith("copying"):
        return "license"
    if name == "METADATA":
        return "metadata"
    ext = lower.rsplit(".", 1)[-1] if "." in lower else ""
    return {"markdown": "md", "htm": "html"}.get(ext, ext or "txt")


def _kind_column(path: Column) -> Column:
    name = F.regexp_extract(path, r"([^/]*)$", 1)
    lower = F.lower(name)
    ext = F.lower(F.regexp_extract(name, r"\.([^.]+)$", 1))
    return (F.when(lower.startswith("license") | lower.startswith("copying"), F.lit("license"))
            .when(name == "METADATA", F.lit("metadata"))
            .when(ext == "markdown", F.lit("md"))
            .when(ext == "htm", F.lit("html"))
            .when(ext == "", F.lit("txt"))
            .otherwise(ext))


def _check_local_source(source: str) -> None:
    """A clear error for a local path or glob that names nothing (remote URIs are Spark's to check)."""
    if "://" in source and not source.startswith("file://"):
        return
    path = source.removeprefix("file://")
    if _GLOB_CHARS & set(path):
        if not globlib.glob(path, recursive=True):
            raise FileNotFoundError(f"raw source {source!r}: the glob matches no files")
    elif not os.path.exists(path):
        raise FileNotFoundError(f"raw source {source!r} does not exist")


# ---------------------------------------------------------------- reading

def read_source(spark: SparkSession, source: str, max_bytes: int = MAX_BYTES,
                max_files: int = MAX_FILES) -> StepResult:
    """Documents from `source` (empty: the venv's package docs) as raw rows plus quarantined rejects."""
    if not source:
        files = default_source_files(max_files)
        if not files:
            raise FileNotFoundError("default raw source: no package docs found under site-packages")
        return read_files(spark, _load_listed(spark, files), source_roots(source), max_bytes)
    _check_local_source(source)
    lower = source.lower()
    if lower.endswith(".jsonl") or lower.endswith(".json"):
        return read_records(spark, _read_jsonl(spark, source), source, max_bytes)
    if lower.endswith(".parquet"):
        return read_records(spark, spark.read.parquet(source), source, max_bytes)
    reader = spark.read.format("binaryFile")
    if os.path.isdir(source.removeprefix("file://")) or "://" in source:
        reader = reader.option("recursiveFileLookup", "true").option("pathGlobFilter", TEXT_GLOB)
    return read_files(spark, reader.load(source), source_roots(source), max_bytes)


def _load_listed(spark: SparkSession, files: list[str]) -> DataFrame:
    """A `binaryFile` frame of paths the driver has already listed.

    Past 32 paths Spark lists them again in a distributed job (one task per path: ~10 s for 1,500
    local files on a laptop); the driver has just listed them, so listing stays on the driver here.
    """
    key = "spark.sql.sources.parallelPartitionDiscovery.threshold"
    previous = spark.conf.get(key, None)
    spark.conf.set(key, str(max(len(files) + 1, 32)))
    try:
        return spark.read.format("binaryFile").load(files)
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


_DECODED = T.StructType([
    T.StructField("text", T.StringType()),
    T.StructField("rule", T.StringType()),
    T.StructField("reason", T.StringType()),
])


@F.pandas_udf(_DECODED)
def _decode_udf(content: pd.Series) -> pd.DataFrame:
    rows = [decode_bytes(b) for b in content]
    return pd.DataFrame(rows, columns=["text", "rule", "reason"])


def decode_bytes(data: bytes | None) -> tuple[str | None, str | None, str | None]:
    """(text, None, None) for a usable UTF-8 document, else (preview or None, rule, reason)."""
    if not data:
        return None, "empty", "file has 0 bytes"
    if b"\x00" in data:
        return None, "binary", f"NUL byte at offset {bytes(data).index(0)}: not a text file"
    try:
        text = bytes(data).decode("utf-8-sig")
    except UnicodeDecodeError as e:
        preview = bytes(data[:PREVIEW_CHARS]).decode("utf-8", errors="replace")
        return preview, "invalid_utf8", f"not valid UTF-8 at byte {e.start}: {e.reason} ({data[e.start:e.start + 4]!r})"
    if not text.strip():
        return None, "empty", "only whitespace"
    return text, None, None


def _canonical(path: str) -> str:
    return re.sub(r"^file:/+", "file:///", path)


def source_roots(source: str) -> list[str]:
    """The URI prefixes that `doc_id` leaves out: the directory a source names, or the default's roots."""
    if not source:
        paths = [sysconfig.get_paths()["purelib"], "/usr/share/doc"]
    else:
        path = source.removeprefix("file://")
        if "://" in path:
            return [path.rstrip("/") + "/"]
        cut = min((path.index(c) for c in _GLOB_CHARS if c in path), default=None)
        if cut is not None:
            path = path[:cut].rsplit("/", 1)[0]
        elif not os.path.isdir(path):
            path = os.path.dirname(path)
        paths = [path]
    return [_canonical("file://" + os.path.abspath(p)).rstrip("/") + "/" for p in paths]


def _doc_id(source: Column, content_hash: Column, roots: list[str]) -> Column:
    """sha256 of the source relative to its root (the longest matching one) and the content hash."""
    relative = source
    for root in sorted(roots, key=len):
        relative = F.when(source.startswith(root), source.substr(len(root) + 1, 1 << 30)).otherwise(relative)
    return F.sha2(F.concat_ws("\n", relative, content_hash), 256)


def read_files(spark: SparkSession, files: DataFrame, roots: list[str],
               max_bytes: int = MAX_BYTES) -> StepResult:
    """Decode a `binaryFile` DataFrame; oversized files are rejected from their length alone."""
    # Hadoop prints `file:/x`, URIs are `file:///x`: one spelling, so sources compare and read back.
    files = files.withColumn("path", F.regexp_replace("path", "^file:/+", "file:///"))
    # Spark's file scan skips zero-length files; find them by comparing with the listing.
    # The listing is URI-encoded (`a%20b.txt`), the scan's `path` column is not (`a b.txt`).
    listed = spark.createDataFrame([(_canonical(unquote(p)),) for p in files.inputFiles()], "path string")
    empty = listed.join(files.select("path"), "path", "left_anti").select(F.col("path").alias("source")) \
        .withColumn("doc_id", _doc_id(F.col("source"), F.lit(""), roots))
    oversized = files.where(F.col("length") > max_bytes).select(
        F.col("path").alias("source"),
        F.format_string(f"%d bytes > max_bytes {max_bytes}", F.col("length")).alias("reason"),
    ).withColumn("doc_id", _doc_id(F.col("source"), F.lit(""), roots))
    # The `length` filter is pushed into the scan, so oversized files' content is never read.
    decoded = (
        files.where(F.col("length") <= max_bytes)
        .select(
            F.col("path").alias("source"),
            F.col("length").cast("long").alias("n_bytes"),
            F.sha2(F.col("content"), 256).alias("content_hash"),
            _decode_udf(F.col("content")).alias("d"),
        )
        .select("source", "n_bytes", "content_hash", "d.*")
        .withColumn("doc_id", _doc_id(F.col("source"), F.col("content_hash"), roots))
        .persist()
    )
    kept = decoded.where(F.col("rule").isNull()).select(
        "doc_id", "source", _kind_column(F.col("source")).alias("kind"), "text", "content_hash",
        "n_bytes", F.current_timestamp().alias("ingested_at"),
    )
    rejected = quarantine_rows(decoded.where(F.col("rule").isNotNull()), "raw_documents", "rule", "reason").unionByName(
        quarantine_rows(oversized, "raw_documents", F.lit("oversized"), "reason", text=None)).unionByName(
        quarantine_rows(empty, "raw_documents", F.lit("empty"), F.lit("file has 0 bytes"), text=None))
    return StepResult(kept, rejected, (decoded,))


_RECORD_SCHEMA = T.StructType([
    T.StructField("text", T.StringType()),
    T.StructField("id", T.StringType()),
    T.StructField("source", T.StringType()),
    T.StructField("_corrupt_record", T.StringType()),
])


def _read_jsonl(spark: SparkSession, path: str) -> DataFrame:
    # Explicit string fields: a numeric `id` arrives as its JSON text; bad lines land in _corrupt_record.
    return (spark.read.schema(_RECORD_SCHEMA)
            .option("mode", "PERMISSIVE").option("columnNameOfCorruptRecord", "_corrupt_record")
            .json(path))


def read_records(spark: SparkSession, records: DataFrame, path: str, max_bytes: int = MAX_BYTES) -> StepResult:
    """Documents from JSONL/Parquet records with `text` and optional `id` / `source` fields."""
    if "text" not in records.columns:
        raise ValueError(f"raw source {path!r} has no `text` field (fields: {', '.join(records.columns)})")
    file_uri = F.col("_metadata.file_path")
    rec_id = F.col("id").cast("string") if "id" in records.columns else F.lit(None).cast("string")
    given_source = F.col("source").cast("string") if "source" in records.columns else F.lit(None).cast("string")
    corrupt = F.col("_corrupt_record") if "_corrupt_record" in records.columns else F.lit(None).cast("string")
    rows = (
        records.select(
            F.col("text").cast("string").alias("text"),
            F.coalesce(given_source, F.when(rec_id.isNotNull(), F.concat(file_uri, F.lit("#"), rec_id)),
                       file_uri).alias("source"),
            corrupt.alias("corrupt"),
        )
        .withColumn("n_bytes", F.coalesce(F.octet_length("text"), F.lit(0)).cast("long"))
        .withColumn("content_hash", F.sha2(F.coalesce(F.col("text"), F.col("corrupt"), F.lit("")), 256))
        .withColumn("doc_id", _doc_id(F.col("source"), F.col("content_hash"), source_roots(path)))
        .withColumn("rule", F.when(F.col("corrupt").isNotNull(), "malformed_record")
                    .when(F.col("n_bytes") > max_bytes, "oversized")
                    .when(F.col("text").isNull() | (F.trim("text") == ""), "empty")
                    .when(F.instr("text", "\x00") > 0, "binary"))
        .withColumn("reason", F.when(F.col("rule") == "malformed_record", F.lit("not a JSON object with a text field"))
                    .when(F.col("rule") == "oversized", F.format_string(f"%d bytes > max_bytes {max_bytes}", "n_bytes"))
                    .when(F.col("rule") == "empty", F.lit("text is missing or blank"))
                    .when(F.col("rule") == "binary", F.lit("text contains NUL characters")))
        # The same text at the same source twice is one document: keep doc_id unique.
        .withColumn("copy", F.row_number().over(Window.partitionBy("doc_id").orderBy("doc_id")))
        .withColumn("reason", F.when(F.col("rule").isNull() & (F.col("copy") > 1),
                                     F.lit("same source and text as an earlier record")).otherwise(F.col("reason")))
        .withColumn("rule", F.when(F.col("rule").isNull() & (F.col("copy") > 1), F.lit("duplicate_record"))
                    .otherwise(F.col("rule")))
        .persist()
    )
    kept = rows.where(F.col("rule").isNull()).select(
        "doc_id", "source", F.lit(source_kind(path)).alias("kind"), "text", "content_hash", "n_bytes",
        F.current_timestamp().alias("ingested_at"),
    )
    preview = F.when(F.col("rule") == "oversized", F.lit(None)).otherwise(F.coalesce("text", "corrupt"))
    rejected = quarantine_rows(rows.where(F.col("rule").isNotNull()), "raw_documents", "rule", "reason", text=preview)
    return StepResult(kept, rejected, (rows,))


def source_label(source: str) -> str:
    """What the UI shows as the source: the path, or what the empty default stands for."""
    return source or f"package docs under {Path(sysconfig.get_paths()['purelib'])} and /usr/share/doc"
