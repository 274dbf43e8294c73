"""Raw text acquisition: files, WARC archives, JSONL or Parquet into one DataFrame of documents, bad inputs set aside.

A source is a directory (read recursively), a glob, a single file, or a `.jsonl` / `.parquet` file (or a
glob or directory of them) with a `text` field and optional `id` / `source` / `url` / `license` fields.
A directory or glob holds text files (`TEXT_GLOB`) and WARC archives (`.warc`, `.warc.gz`). Spark
lists and reads the files (`binaryFile`), so the same code reads HDFS or S3 on a cluster. Bytes are
decoded in a pandas UDF (text files) or parsed with warcio in `mapInPandas` (WARC); a document is
rejected with a rule name rather than repaired:

| rule               | when                                                                    |
|--------------------|-------------------------------------------------------------------------|
| `oversized`        | a file over `max_bytes` (a WARC file: over binaryFile's 2 GiB row       |
|                    | limit), a record or WARC payload over it. An oversized file is triaged  |
|                    | from the listing and never loaded                                       |
| `empty`            | zero bytes (Spark's scan skips these; found from the file listing), or  |
|                    | only whitespace                                                         |
| `binary`           | contains NUL bytes (NUL characters, for a declared non-UTF-8 charset)   |
| `invalid_utf8`     | not valid UTF-8. Quarantined, not decoded with replacement characters:   |
|                    | guessing a legacy code page silently corrupts text, and the quarantine  |
|                    | row shows which files need a re-encode at the source                    |
| `invalid_charset`  | a WARC payload whose Content-Type charset is unknown or does not decode |
| `malformed_record` | a JSONL line that is not a JSON object; a WARC record that is truncated,|
|                    | fails its digest, or that warcio cannot parse (with warcio's message;   |
|                    | parsing stops there, and the file's records before it are kept)         |
| `duplicate_record` | the same text at the same source twice (keeps `doc_id` unique)          |

A WARC record is a document by definition only as follows; everything else is skipped without a
row (it is not an error), except that truncation or a digest failure quarantines any record:

| WARC-Type                   | document when                                                   |
|-----------------------------|-----------------------------------------------------------------|
| `response`                  | HTTP status 2xx and Content-Type HTML (`text/html`,             |
|                             | `application/xhtml+xml`: kind `html`) or prose text             |
|                             | (`text/plain`, `text/markdown`, `text/x-rst`: kind `txt`)       |
| `resource`, `conversion`    | the record's Content-Type is one of those (WET text is a        |
|                             | `text/plain` conversion)                                        |
| `request`, `warcinfo`,      | never                                                           |
| `metadata`, `revisit`,      |                                                                 |
| `continuation`              |                                                                 |

Other payloads (images, PDF, CSS, scripts, JSON) and non-2xx responses are not documents. A payload
is decoded with the charset of its Content-Type, else UTF-8. Its `source` is
`<warc file uri>#<WARC-Record-ID>` and `url` its WARC-Target-URI.

Spark's file listing skips names starting with `_` or `.` (its convention for `_SUCCESS`, `.crc`
and other bookkeeping files); such files in a source directory are not documents to it.

`doc_id` hashes the document's source relative to its source root with its content hash, so the same
files give the same ids wherever the source is mounted (a laptop, a cluster, a test's tmp dir);
`source` keeps the full URI and `source_file` the file it was read from. `license` is the package's
license for the default source (from the METADATA of the `*.dist-info` that installed the file), a
record's `license` field for JSONL/Parquet, else null.

Incremental ingest: `read_source(..., seen=<ingest_log>)` lists the source, drops the files whose
(URI, length, modification time) an earlier run logged, and reads only the rest, a whole file at a
time (JSONL, Parquet and WARC too). `IngestResult.log` has one `INGEST_LOG_COLUMNS` row per file it
read; `merge_raw` makes the next `raw_documents` version from the previous one and this run.

A Parquet file that is not Parquet (no readable footer, or zero bytes) raises ValueError naming it
before anything is read, rather than being quarantined: Spark's `ignoreCorruptFiles` cannot say which
file it skipped and also skips files on transient I/O errors, and a file logged as quarantined is
not read again until it changes.

This module also defines the quarantine record every data step writes (`quarantine_rows`).
"""

from __future__ import annotations

import codecs
import glob as globlib
import hashlib
import io
import os
import re
import sysconfig
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

import pandas as pd
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from warcio.archiveiterator import ArchiveIterator

from llm_assets.data.licenses import file_licenses

TEXT_EXTENSIONS = (".md", ".rst", ".txt", ".html")
WARC_EXTENSIONS = (".warc", ".warc.gz")
# The files a directory source reads: text and WARC. Hadoop's GlobFilter is case-sensitive and
# matches the file name only.
TEXT_GLOB = "*.{md,MD,markdown,rst,RST,txt,TXT,html,htm,HTML,warc,WARC,warc.gz,WARC.gz,WARC.GZ}"
# Machine-written package metadata, not prose.
_NOT_DOCS = {"top_level.txt", "entry_points.txt", "dependency_links.txt", "namespace_packages.txt",
             "SOURCES.txt", "requires.txt", "RECORD", "WHEEL", "INSTALLER", "REQUESTED"}
_GLOB_CHARS = set("*?[]{}")
MAX_BYTES = 2_000_000
MAX_FILES = 1500
# binaryFile loads a file into one row; it refuses files over 2 GiB.
MAX_WARC_FILE_BYTES = (1 << 31) - 1
PREVIEW_CHARS = 200

HTML_TYPES = frozenset({"text/html", "application/xhtml+xml"})
TEXT_TYPES = frozenset({"text/plain", "text/markdown", "text/x-markdown", "text/x-rst"})
_WARC_DOCUMENT_TYPES = frozenset({"response", "resource", "conversion"})

RAW_COLUMNS = ["doc_id", "source", "source_file", "url", "kind", "text", "content_hash", "n_bytes", "license",
               "ingested_at"]
QUARANTINE_COLUMNS = ["doc_id", "source", "step", "rule", "reason", "text_preview", "quarantined_at"]
# `ingest_log`, one row per file read: source_file (string, its URI), length (long, bytes), modified_at
# (timestamp), outcome (string: `kept` when it gave a document, `quarantined` when it gave only rejects,
# `skipped` when neither, e.g. a WARC of no document records or an empty JSONL file), documents (long,
# kept), ingested_at (timestamp: the run's ingest time, the same as on its documents).
INGEST_LOG_COLUMNS = ["source_file", "length", "modified_at", "outcome", "documents", "ingested_at"]

# Every reader builds these columns; `text` holds the quarantine preview on rejected rows.
_ROW = T.StructType([
    T.StructField("source_file", T.StringType()),
    T.StructField("source", T.StringType()),
    T.StructField("url", T.StringType()),
    T.StructField("kind", T.StringType()),
    T.StructField("text", T.StringType()),
    T.StructField("content_hash", T.StringType()),
    T.StructField("n_bytes", T.LongType()),
    T.StructField("license", T.StringType()),
    T.StructField("rule", T.StringType()),
    T.StructField("reason", T.StringType()),
])


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


@dataclass
class IngestResult(StepResult):
    """Documents and rejects of the files read this run, and the `ingest_log` rows recording those files."""

    log: DataFrame | None = None
    """One row per file read (`INGEST_LOG_COLUMNS`); append it to `ingest_log` after the documents."""
    listed_files: int = 0
    """Files the source lists now."""
    new_files: int = 0
    """Of those, files not in `seen` (new or changed): the ones read."""


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


def is_warc(path: str) -> bool:
    """Whether a file is read as a WARC archive (by its name)."""
    return path.lower().endswith(WARC_EXTENSIONS)


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


# ---------------------------------------------------------------- decoding

_DECODED = T.StructType([
    T.StructField("text", T.StringType()),
    T.StructField("rule", T.StringType()),
    T.StructField("reason", T.StringType()),
])


def _decode_batch(content: pd.Series) -> pd.DataFrame:
    rows = [decode_bytes(b) for b in content]
    return pd.DataFrame(rows, columns=["text", "rule", "reason"])


def decode_bytes(data: bytes | None, charset: str | None = None) -> tuple[str | None, str | None, str | None]:
    """(text, None, None) for a usable document, else (preview or None, rule, reason).

    UTF-8 (a BOM allowed) unless `charset` names another encoding, as a WARC payload's Content-Type may.
    """
    if not data:
        return None, "empty", "0 bytes"
    data = bytes(data)
    if charset and not _is_utf8(charset):
        try:
            text = data.decode(charset)
        except LookupError:
            return None, "invalid_charset", f"unknown charset {charset!r} in Content-Type"
        except UnicodeDecodeError as e:
            preview = data[:PREVIEW_CHARS].decode(charset, errors="replace")
            return preview, "invalid_charset", f"not valid {charset} at byte {e.start}: {e.reason}"
        if "\x00" in text:
            return None, "binary", f"NUL character at {text.index(chr(0))}: not a text document"
    else:
        if b"\x00" in data:
            return None, "binary", f"NUL byte at offset {data.index(0)}: not a text file"
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            preview = data[:PREVIEW_CHARS].decode("utf-8", errors="replace")
            return (preview, "invalid_utf8",
                    f"not valid UTF-8 at byte {e.start}: {e.reason} ({data[e.start:e.start + 4]!r})")
    if not text.strip():
        return None, "empty", "only whitespace"
    return text, None, None


def _is_utf8(charset: str) -> bool:
    try:
        return codecs.lookup(charset).name in ("utf-8", "utf-8-sig")
    except LookupError:
        return False


# ---------------------------------------------------------------- WARC

def warc_documents(data: bytes, file_uri: str, max_bytes: int = MAX_BYTES) -> list[dict]:
    """The document records of one WARC file's bytes (plain or gzip), as `_ROW` dicts (no license).

    A rejected record has `rule` and `reason`. Parsing stops at the first record warcio cannot read,
    or at a trailing incomplete record (warcio ends a truncated gzip member silently, so the bytes
    it did not reach tell); the records before it are kept.
    """
    rows: list[dict] = []
    records = ArchiveIterator(io.BytesIO(data), check_digests=True)
    try:
        for record in records:
            row = _warc_row(record, file_uri, max_bytes)
            if row is not None:
                rows.append(row)
    except Exception as e:  # noqa: BLE001 - untrusted bytes: any parse failure is this file's defect, and its reason
        message = " ".join(str(e).split())
        rows.append(_malformed_warc(file_uri, data, records.offset, f"{type(e).__name__}: {message}"))
        return rows
    if records.offset < len(data):
        rows.append(_malformed_warc(file_uri, data, records.offset,
                                    f"bytes {records.offset}-{len(data)} are not a complete WARC record "
                                    "(the file is truncated or a gzip member is corrupt)"))
    return rows


def _warc_row(record, file_uri: str, max_bytes: int) -> dict | None:
    headers = record.rec_headers
    row = {"source_file": file_uri, "source": f"{file_uri}#{headers.get_header('WARC-Record-ID')}",
           "url": headers.get_header("WARC-Target-URI"), "kind": None, "text": None, "content_hash": None,
           "n_bytes": 0, "license": None, "rule": None, "reason": None}
    kind, charset = _warc_payload_type(record)
    payload = b""
    if kind is not None:
        try:
            stream = record.content_stream()  # undoes chunked transfer and gzip/br content encodings
            payload = stream.read(max_bytes + 1)
            row["n_bytes"] = len(payload) + _drain(stream)
        except Exception as e:  # noqa: BLE001 - a broken HTTP body: this record's defect
            return {**row, "kind": kind, "rule": "malformed_record", "reason": f"{type(e).__name__}: {e}"}
    _drain(record.raw_stream)
    missing = getattr(record.raw_stream, "limit", 0)
    if missing > 0:
        return {**row, "kind": kind, "rule": "malformed_record",
                "reason": f"record truncated: the file ends {missing} bytes short of its Content-Length"}
    if record.digest_checker.passed is False:
        return {**row, "kind": kind, "rule": "malformed_record", "reason": "; ".join(record.digest_checker.problems)}
    if kind is None:
        return None
    row.update(kind=kind, content_hash=hashlib.sha256(payload).hexdigest())
    if row["n_bytes"] > max_bytes:
        return {**row, "rule": "oversized", "reason": f"{row['n_bytes']} bytes > max_bytes {max_bytes}"}
    text, rule, reason = decode_bytes(payload, charset)
    return {**row, "text": text, "rule": rule, "reason": reason}


def _warc_payload_type(record) -> tuple[str | None, str | None]:
    """(kind, charset) of a document record; (None, None) for a record that is not a document."""
    if record.rec_type not in _WARC_DOCUMENT_TYPES:
        return None, None
    if record.http_headers is not None:
        if record.rec_type != "response" or not record.http_headers.get_statuscode().startswith("2"):
            return None, None
        content_type = record.http_headers.get_header("Content-Type")
    else:
        content_type = record.content_type
    mime, _, params = (content_type or "").partition(";")
    mime = mime.strip().lower()
    kind = "html" if mime in HTML_TYPES else "txt" if mime in TEXT_TYPES else None
    charset = re.search(r"charset\s*=\s*[\"']?([^\"';\s]+)", params, re.IGNORECASE)
    return kind, charset.group(1) if charset and kind else None


def _drain(stream, chunk: int = 1 << 16) -> int:
    n = 0
    while block := stream.read(chunk):
        n += len(block)
    return n


def _malformed_warc(file_uri: str, data: bytes, offset: int, reason: str) -> dict:
    """A quarantine row for the unreadable record at `offset`, named by its record id when one can be read.

    In a file gzipped as one member warcio's offsets mean nothing; the row then names the file.
    """
    source = file_uri
    if 0 <= offset <= len(data):
        source = f"{file_uri}#{_record_id_at(data, offset) or f'offset={offset}'}"
        reason = f"at byte {offset}: {reason}"
    return {"source_file": file_uri, "source": source, "url": None, "kind": None, "text": None,
            "content_hash": None, "n_bytes": 0, "license": None, "rule": "malformed_record", "reason": reason}


def _record_id_at(data: bytes, offset: int) -> str | None:
    """The WARC-Record-ID in the (possibly gzipped, possibly cut) record starting at `offset`, if readable."""
    head = data[offset:offset + (1 << 16)]
    if head[:2] == b"\x1f\x8b":
        try:
            head = zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(head, 1 << 14)
        except zlib.error:
            return None
    found = re.search(rb"WARC-Record-ID:\s*(\S+)", head)
    return found.group(1).decode("ascii", errors="replace") if found else None


def _warc_rows(spark: SparkSession, uris: list[str], max_bytes: int) -> DataFrame:
    """Parse WARC files on the executors: one row per document record (and per bad record)."""
    columns = _ROW.fieldNames()

    def parse(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for batch in batches:
            rows = [row for uri, data in zip(batch["source_file"], batch["content"])
                    for row in warc_documents(data, uri, max_bytes)]
            yield pd.DataFrame(rows, columns=columns)

    files = _load_listed(spark, uris).select(_canonical_column(F.col("path")).alias("source_file"), "content")
    return files.mapInPandas(parse, _ROW)


# ---------------------------------------------------------------- reading

def read_source(spark: SparkSession, source: str, max_bytes: int = MAX_BYTES, max_files: int = MAX_FILES,
                seen: DataFrame | None = None) -> IngestResult:
    """Documents from `source` (empty: the venv's package docs) as raw rows plus quarantined rejects.

    With `seen` (the `ingest_log` table), files whose (source_file, length, modified_at) it holds are
    not read again.
    """
    if not source:
        files = default_source_files(max_files)
        if not files:
            raise FileNotFoundError("default raw source: no package docs found under site-packages")
        return read_files(spark, _load_listed(spark, files), source_roots(source), max_bytes, seen,
                          licenses=file_licenses(files, sysconfig.get_paths()["purelib"]))
    _check_local_source(source)
    lower = source.lower()
    if lower.endswith((".jsonl", ".json", ".parquet")):
        return _read_record_files(spark, source, "parquet" if lower.endswith(".parquet") else "json", max_bytes, seen)
    reader = spark.read.format("binaryFile")
    if os.path.isdir(source.removeprefix("file://")) or "://" in source:
        reader = reader.option("recursiveFileLookup", "true").option("pathGlobFilter", TEXT_GLOB)
    return read_files(spark, reader.load(source), source_roots(source), max_bytes, seen)


def read_files(spark: SparkSession, files: DataFrame, roots: list[str], max_bytes: int = MAX_BYTES,
               seen: DataFrame | None = None, licenses: dict[str, str] | None = None) -> IngestResult:
    """Decode the text files and parse the WARC files a `binaryFile` DataFrame lists.

    `files` only names the files: they are listed without their content, sorted out on the driver
    (already seen, oversized, empty) and the rest loaded by path. `licenses` maps file URIs to licenses.
    """
    new, listed = _new_files(spark, files, seen)
    warcs = [f for f in new if is_warc(f.uri)]
    texts = [f for f in new if not is_warc(f.uri)]
    triaged = [(f.uri, "empty", "file has 0 bytes") for f in new if f.length == 0] + \
              [(f.uri, "oversized", f"{f.length} bytes > max_bytes {max_bytes}")
               for f in texts if f.length > max_bytes] + \
              [(f.uri, "oversized", f"{f.length} bytes > {MAX_WARC_FILE_BYTES}, the most a WARC file can be "
                "(binaryFile's row limit): split it") for f in warcs if f.length > MAX_WARC_FILE_BYTES]
    parts = [spark.createDataFrame(triaged, "source_file string, rule string, reason string")
             .withColumn("source", F.col("source_file")).withColumn("kind", _kind_column(F.col("source_file")))]
    if to_read := [f.uri for f in texts if 0 < f.length <= max_bytes]:
        parts.append(
            _load_listed(spark, to_read)
            .select(_canonical_column(F.col("path")).alias("source_file"),
                    F.col("length").cast("long").alias("n_bytes"),
                    F.sha2(F.col("content"), 256).alias("content_hash"),
                    # made at call time, not import: a UDF made before a Spark Connect session exists is a classic one
                    F.pandas_udf(_decode_batch, _DECODED)(F.col("content")).alias("d"))
            .select("source_file", F.col("source_file").alias("source"),
                    _kind_column(F.col("source_file")).alias("kind"), "n_bytes", "content_hash", "d.*"))
    if to_parse := [f.uri for f in warcs if 0 < f.length <= MAX_WARC_FILE_BYTES]:
        parts.append(_flag_duplicates(_with_doc_id(_warc_rows(spark, to_parse, max_bytes), roots)))
    rows = _with_doc_id(_union(parts), roots)
    if licenses:
        known = spark.createDataFrame(list(licenses.items()), "source_file string, package_license string")
        rows = (rows.join(F.broadcast(known), "source_file", "left")
                .withColumn("license", F.coalesce("license", "package_license")).drop("package_license"))
    return _result(spark, rows, new, listed)


@dataclass(frozen=True)
class _File:
    uri: str
    length: int
    modified_ms: int | None


def _new_files(spark: SparkSession, files: DataFrame, seen: DataFrame | None) -> tuple[list[_File], int]:
    """The files `files` lists that `seen` does not hold with the same length and modification time.

    Only the listing is read: binaryFile skips the content when the `content` column is not selected.
    """
    listing = files.select(_canonical_column(F.col("path")).alias("source_file"),
                           F.col("length").cast("long").alias("length"),
                           F.unix_millis("modificationTime").alias("modified_ms"))
    found = [_File(r.source_file, r.length, r.modified_ms) for r in listing.collect()]
    # Spark's file scan skips zero-length files; find them by comparing with the listing.
    # The listing is URI-encoded (`a%20b.txt`), the scan's `path` column is not (`a b.txt`).
    scanned = {f.uri for f in found}
    empty = [_File(uri, 0, _modified_ms(spark, uri))
             for uri in sorted({_canonical(unquote(p)) for p in files.inputFiles()} - scanned)]
    found = sorted(found + empty, key=lambda f: f.uri)
    if seen is None:
        return found, len(found)
    missing = {"source_file", "length", "modified_at"} - set(seen.columns)
    if missing:
        raise ValueError(f"`seen` is not an ingest log: it lacks {sorted(missing)} (has {seen.columns})")
    logged = seen.select("source_file", F.col("length").cast("long").alias("length"),
                         F.unix_millis("modified_at").alias("modified_ms"))
    candidates = listing.unionByName(spark.createDataFrame(
        [(f.uri, f.length, f.modified_ms) for f in empty], "source_file string, length long, modified_ms long"))
    new = {r.source_file for r in candidates.join(logged, ["source_file", "length", "modified_ms"], "left_anti")
           .select("source_file").collect()}
    return [f for f in found if f.uri in new], len(found)


def _modified_ms(spark: SparkSession, uri: str) -> int | None:
    """The modification time of one file, as Hadoop reports it (ms), for the zero-length files the scan skips."""
    if uri.startswith("file:"):
        return os.stat(uri.removeprefix("file://")).st_mtime_ns // 1_000_000
    try:
        jvm, conf = spark._jvm, spark.sparkContext._jsc.hadoopConfiguration()
    except AttributeError:  # Spark Connect has no JVM on this side: the empty file is read again each run
        return None
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(conf).getFileStatus(path).getModificationTime()


def _load_listed(spark: SparkSession, files: list[str]) -> DataFrame:
    """A `binaryFile` frame of paths the driver has already listed.

    Past 32 paths Spark lists them again in a distributed job (one task per path: ~10 s for 1,500
    local files on a laptop); local paths have just been listed, so listing stays on the driver
    there. Remote stores keep the distributed listing (one request per path).
    """
    paths = [_escape_glob(p) for p in files]
    if any("://" in p and not p.startswith("file:") for p in paths):
        return spark.read.format("binaryFile").load(paths)
    key = "spark.sql.sources.parallelPartitionDiscovery.threshold"
    previous = spark.conf.get(key, None)
    spark.conf.set(key, str(max(len(paths) + 1, 32)))
    try:
        return spark.read.format("binaryFile").load(paths)
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)


def _escape_glob(path: str) -> str:
    """A path Spark reads as itself: it expands glob characters in the paths it is given."""
    return re.sub(r"([*?\[\]{}\\])", r"\\\1", path)


def _canonical(path: str) -> str:
    return re.sub(r"^file:/+", "file:///", path)


def _canonical_column(path: Column) -> Column:
    # Hadoop prints `file:/x`, URIs are `file:///x`: one spelling, so sources compare and read back.
    return F.regexp_replace(path, "^file:/+", "file:///")


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


def _with_doc_id(rows: DataFrame, roots: list[str]) -> DataFrame:
    """Rows with `doc_id` set where a reader has not set it already."""
    computed = _doc_id(F.col("source"), F.coalesce(F.col("content_hash"), F.lit("")), roots)
    return rows.withColumn("doc_id", F.coalesce(F.col("doc_id"), computed) if "doc_id" in rows.columns else computed)


def _flag_duplicates(rows: DataFrame) -> DataFrame:
    """The same text at the same source twice is one document: reject the copies, keeping doc_id unique."""
    copy = F.row_number().over(Window.partitionBy("doc_id").orderBy("doc_id"))
    duplicate = F.col("rule").isNull() & (F.col("copy") > 1)
    return (rows.withColumn("copy", copy)
            .withColumn("reason", F.when(duplicate, F.lit("same source and text as an earlier record"))
                        .otherwise(F.col("reason")))
            .withColumn("rule", F.when(duplicate, F.lit("duplicate_record")).otherwise(F.col("rule")))
            .drop("copy"))


def _union(parts: list[DataFrame]) -> DataFrame:
    """Parts with any subset of the `_ROW` columns and `doc_id`, as one frame with all of them (nulls elsewhere)."""
    def conform(df: DataFrame) -> DataFrame:
        return df.select(*[(F.col(f.name) if f.name in df.columns else F.lit(None)).cast(f.dataType).alias(f.name)
                           for f in [*_ROW.fields, T.StructField("doc_id", T.StringType())]])

    out = conform(parts[0])
    for part in parts[1:]:
        out = out.unionByName(conform(part))
    return out


def _result(spark: SparkSession, rows: DataFrame, new: list[_File], listed: int) -> IngestResult:
    """Kept rows, quarantine rows and ingest log rows, all stamped with one ingest time."""
    ingested_at = F.timestamp_micros(F.lit(time.time_ns() // 1000))
    rows = rows.persist()
    kept = rows.where(F.col("rule").isNull()).select(
        "doc_id", "source", "source_file", "url", "kind", "text", "content_hash", "n_bytes", "license",
        ingested_at.alias("ingested_at"))
    rejected = quarantine_rows(rows.where(F.col("rule").isNotNull()), "raw_documents", "rule", "reason")
    files = spark.createDataFrame([(f.uri, f.length, f.modified_ms) for f in new],
                                  "source_file string, length long, modified_ms long")
    counts = rows.groupBy("source_file").agg(F.count_if(F.col("rule").isNull()).alias("documents"),
                                             F.count_if(F.col("rule").isNotNull()).alias("rejects"))
    documents = F.coalesce(F.col("documents"), F.lit(0)).cast("long")
    log = files.join(counts, "source_file", "left").select(
        "source_file", "length", F.timestamp_millis("modified_ms").alias("modified_at"),
        F.when(documents > 0, F.lit("kept")).when(F.coalesce(F.col("rejects"), F.lit(0)) > 0, F.lit("quarantined"))
        .otherwise(F.lit("skipped")).alias("outcome"),
        documents.alias("documents"), ingested_at.alias("ingested_at"))
    return IngestResult(kept, rejected, (rows,), log=log, listed_files=listed, new_files=len(new))


# ---------------------------------------------------------------- JSONL and Parquet records

_RECORD_SCHEMA = T.StructType([
    T.StructField("text", T.StringType()),
    T.StructField("id", T.StringType()),
    T.StructField("source", T.StringType()),
    T.StructField("url", T.StringType()),
    T.StructField("license", T.StringType()),
    T.StructField("_corrupt_record", T.StringType()),
])


def _read_record_files(spark: SparkSession, source: str, fmt: str, max_bytes: int,
                       seen: DataFrame | None) -> IngestResult:
    """JSONL (`fmt` json) or Parquet records of the files `source` names that `seen` has not logged."""
    lister = spark.read.format("binaryFile")
    if os.path.isdir(source.removeprefix("file://")) or "://" in source:
        lister = lister.option("recursiveFileLookup", "true")
    new, listed = _new_files(spark, lister.load(source), seen)
    if fmt == "parquet" and (empty := [f.uri for f in new if f.length == 0]):
        raise ValueError(f"raw source {source!r}: {empty[0]} is not a readable Parquet file (0 bytes)")
    paths = [_escape_glob(f.uri) for f in new if f.length > 0]
    if not paths:
        rows = _union([spark.createDataFrame([], _ROW)])
    elif fmt == "json":
        # Explicit string fields: a numeric `id` arrives as its JSON text; bad lines land in _corrupt_record.
        records = (spark.read.schema(_RECORD_SCHEMA).option("mode", "PERMISSIVE")
                   .option("columnNameOfCorruptRecord", "_corrupt_record").json(paths))
        rows = _record_rows(spark, records, source, max_bytes)
    else:
        rows = _record_rows(spark, _read_parquet(spark, paths, source), source, max_bytes)
    return _result(spark, rows, new, listed)


def _read_parquet(spark: SparkSession, paths: list[str], source: str) -> DataFrame:
    """Parquet files with every footer read now (mergeSchema), so a file that is not Parquet fails here."""
    try:
        return spark.read.option("mergeSchema", "true").parquet(*paths)
    except Exception as e:
        message = str(e)
        bad = re.search(r"reading file (\S+?)\.?\s", message)
        if bad is None:
            raise
        cause = re.search(r"is not a Parquet file[^\n]*", message)
        raise ValueError(f"raw source {source!r}: {_canonical(unquote(bad.group(1)))} is not a readable Parquet "
                         f"file ({cause.group(0) if cause else 'its footer cannot be read'})") from e


def _record_rows(spark: SparkSession, records: DataFrame, path: str, max_bytes: int) -> DataFrame:
    """`_ROW` rows (with doc_id) of JSONL/Parquet records with `text` and optional `id`, `source`,
    `url` and `license` fields; `path` is the source they were read from."""
    if "text" not in records.columns:
        raise ValueError(f"raw source {path!r} has no `text` field (fields: {', '.join(records.columns)})")

    def field(name: str) -> Column:
        return F.col(name).cast("string") if name in records.columns else F.lit(None).cast("string")

    # `_metadata.file_path` is URI-encoded (`a%20b.jsonl`); the file listing is how sources spell it.
    files = spark.createDataFrame([(_canonical(p), _canonical(unquote(p))) for p in records.inputFiles()],
                                  "encoded string, source_file string")
    rec_id = field("id")
    rows = (
        records.select(
            F.col("text").cast("string").alias("text"), rec_id.alias("id"), field("source").alias("given_source"),
            field("url").alias("url"), field("license").alias("license"), field("_corrupt_record").alias("corrupt"),
            _canonical_column(F.col("_metadata.file_path")).alias("encoded"))
        .join(F.broadcast(files), "encoded", "left")
        .withColumn("source_file", F.coalesce("source_file", "encoded"))
        .withColumn("source", F.coalesce("given_source",
                                         F.when(rec_id.isNotNull(), F.concat("source_file", F.lit("#"), rec_id)),
                                         "source_file"))
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
    )
    rows = _flag_duplicates(rows)
    # On a rejected row `text` is the quarantine preview: none for an oversized record, the bad line for a
    # malformed one.
    text = F.when(F.col("rule") == "oversized", F.lit(None)).otherwise(F.coalesce("text", "corrupt"))
    return _union([rows.withColumn("text", text).withColumn("kind", F.lit(source_kind(path)))])


# ---------------------------------------------------------------- the next raw_documents version

def merge_raw(previous: DataFrame | None, result: IngestResult) -> DataFrame:
    """The next `raw_documents` rows: the previous ones, less those of the files read again (a changed
    file replaces all its documents) and those this run produced again, plus this run's documents."""
    if previous is None:
        return result.kept
    carried = (previous.join(result.log.select("source_file"), "source_file", "left_anti")
               .join(result.kept.select("doc_id"), "doc_id", "left_anti"))
    return carried.select(*RAW_COLUMNS).unionByName(result.kept)


def source_label(source: str) -> str:
    """What the UI shows as the source: the path, or what the empty default stands for."""
    return source or f"package docs under {Path(sysconfig.get_paths()['purelib'])} and /usr/share/doc"
