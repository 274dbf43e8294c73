"""Ingest: good files become rows, bad files are quarantined with their reason, bad sources raise."""

import gzip
import hashlib
import io
import os
import re
import sysconfig
from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from llm_assets.data import ingest, licenses
from resources.lakehouse import LakehouseResource

WORDS = "Spark reads every file of the source and decodes its bytes as UTF-8 text. "


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "nested").mkdir(parents=True)
    (src / "guide.md").write_text("# Guide\n\n" + WORDS * 3)
    (src / "notes.txt").write_text(WORDS * 2)
    (src / "read me 100%.txt").write_text(WORDS)                         # listed URI-encoded by Spark
    (src / "page.html").write_text(f"<html><body><p>{WORDS}</p></body></html>")
    (src / "nested" / "api.rst").write_text("API\n===\n\n" + WORDS)
    (src / "script.py").write_text("print('not a document')\n")       # not a text extension: not read
    (src / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (src / "empty.md").write_bytes(b"")
    (src / "latin1.txt").write_bytes("Café naïve résumé, déjà vu. ".encode("latin-1") * 10)
    (src / "huge.txt").write_text(WORDS * 100)                          # > max_bytes below
    return src


def _collect(result: ingest.StepResult) -> tuple[pd.DataFrame, pd.DataFrame]:
    try:
        return result.kept.toPandas(), result.rejected.toPandas()
    finally:
        result.release()


def test_directory_source_ingests_good_files_and_quarantines_bad_ones(spark, tmp_path):
    kept, rejected = _collect(ingest.read_source(spark, str(_source(tmp_path)), max_bytes=2000))

    names = sorted(Path(s).name for s in kept["source"])
    assert names == ["api.rst", "guide.md", "notes.txt", "page.html", "read me 100%.txt"]
    assert list(kept.columns) == ingest.RAW_COLUMNS
    assert kept.set_index(kept["source"].map(lambda s: Path(s).name))["kind"].to_dict() == {
        "api.rst": "rst", "guide.md": "md", "notes.txt": "txt", "page.html": "html", "read me 100%.txt": "txt"}
    assert kept["doc_id"].is_unique and kept["doc_id"].str.fullmatch(r"[0-9a-f]{64}").all()
    assert (kept["source_file"] == kept["source"]).all()
    assert kept["url"].isna().all() and kept["license"].isna().all()
    guide = kept[kept["source"].str.endswith("guide.md")].iloc[0]
    assert guide["text"].startswith("# Guide") and guide["n_bytes"] == len(guide["text"].encode())

    by_file = rejected.set_index(rejected["source"].map(lambda s: Path(s).name))
    assert by_file["rule"].to_dict() == {"binary.txt": "binary", "empty.md": "empty",
                                         "latin1.txt": "invalid_utf8", "huge.txt": "oversized"}
    assert "NUL byte" in by_file.loc["binary.txt", "reason"]
    assert "not valid UTF-8 at byte 3" in by_file.loc["latin1.txt", "reason"]
    assert "> max_bytes 2000" in by_file.loc["huge.txt", "reason"]
    assert pd.isna(by_file.loc["huge.txt", "text_preview"])     # its content was never read
    assert by_file.loc["latin1.txt", "text_preview"].startswith("Caf\ufffd")
    assert set(rejected["step"]) == {"raw_documents"}
    assert list(rejected.columns) == ingest.QUARANTINE_COLUMNS


def test_raw_rows_rejects_and_log_round_trip_through_delta(spark, tmp_path):
    lakehouse = LakehouseResource(root=str(tmp_path / "lake"))
    result = ingest.read_source(spark, str(_source(tmp_path)), max_bytes=2000)
    raw = lakehouse.write(result.kept, "raw_documents", "test")
    lakehouse.write(result.rejected, "quarantine", "test", mode="append")
    log = lakehouse.write(result.log, "ingest_log", "test", mode="append")
    result.release()

    table = DeltaTable(raw.uri).to_pandas()
    assert len(table) == raw.rows == 5
    schema = {f.name: f.type.type for f in DeltaTable(raw.uri).schema().fields}
    assert schema == {"doc_id": "string", "source": "string", "source_file": "string", "url": "string",
                      "kind": "string", "text": "string", "content_hash": "string", "n_bytes": "long",
                      "license": "string", "ingested_at": "timestamp"}
    assert list(table.columns) == ingest.RAW_COLUMNS
    assert len(DeltaTable(lakehouse.uri("quarantine")).to_pandas()) == 4

    logged = DeltaTable(log.uri).to_pandas()
    assert list(logged.columns) == ingest.INGEST_LOG_COLUMNS
    assert {f.name: f.type.type for f in DeltaTable(log.uri).schema().fields} == {
        "source_file": "string", "length": "long", "modified_at": "timestamp", "outcome": "string",
        "documents": "long", "ingested_at": "timestamp"}
    by_file = logged.set_index(logged["source_file"].map(lambda s: Path(s).name))
    assert by_file["outcome"].to_dict() == {
        "api.rst": "kept", "guide.md": "kept", "notes.txt": "kept", "page.html": "kept", "read me 100%.txt": "kept",
        "binary.txt": "quarantined", "empty.md": "quarantined", "latin1.txt": "quarantined", "huge.txt": "quarantined"}
    assert by_file.loc["guide.md", "documents"] == 1 and by_file.loc["huge.txt", "documents"] == 0
    assert by_file.loc["huge.txt", "length"] == len(WORDS) * 100
    assert set(logged["ingested_at"]) == set(table["ingested_at"])  # one ingest time links documents and log


def test_glob_source_reads_only_what_it_matches(spark, tmp_path):
    src = _source(tmp_path)
    kept, rejected = _collect(ingest.read_source(spark, str(src / "*.md")))
    assert sorted(Path(s).name for s in kept["source"]) == ["guide.md"]
    assert rejected["rule"].tolist() == ["empty"]


def test_jsonl_source(spark, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join([
        '{"id": 1, "text": "first document text"}',
        '{"id": "b", "text": "second document text", "source": "https://example.org/b", "url": "https://example.org/b",'
        ' "license": "CC-BY-4.0"}',
        '{"text": "no id at all"}',
        '{"id": 4, "text": ""}',
        '{"id": 5}',
        'this line is not json',
        '{"id": 1, "text": "first document text"}',
    ]) + "\n")
    kept, rejected = _collect(ingest.read_source(spark, str(path)))

    assert sorted(kept["text"]) == ["first document text", "no id at all", "second document text"]
    sources = set(kept["source"])
    assert "https://example.org/b" in sources
    assert any(s.endswith("docs.jsonl#1") for s in sources)
    assert any(s.endswith("docs.jsonl") for s in sources)
    assert set(kept["kind"]) == {"jsonl"}
    second = kept[kept["text"] == "second document text"].iloc[0]
    assert (second["url"], second["license"]) == ("https://example.org/b", "CC-BY-4.0")
    assert kept.loc[kept["text"] != "second document text", "license"].isna().all()
    assert set(kept["source_file"]) == {f"file://{path}"}
    assert sorted(rejected["rule"]) == ["duplicate_record", "empty", "empty", "malformed_record"]
    assert rejected.loc[rejected["rule"] == "malformed_record", "text_preview"].item() == "this line is not json"


def test_parquet_source(spark, tmp_path):
    path = tmp_path / "docs.parquet"
    pd.DataFrame({"id": [10, 11, 12], "text": ["alpha document", "beta document", "x" * 50]}).to_parquet(path)
    kept, rejected = _collect(ingest.read_source(spark, str(path), max_bytes=40))
    assert sorted(kept["text"]) == ["alpha document", "beta document"]
    assert all("docs.parquet#1" in s for s in kept["source"])
    assert rejected["rule"].tolist() == ["oversized"] and "50 bytes" in rejected["reason"].item()


def test_records_without_a_text_field_raise(spark, tmp_path):
    path = tmp_path / "bad.parquet"
    pd.DataFrame({"body": ["hello"]}).to_parquet(path)
    with pytest.raises(ValueError, match="bad.parquet.*no `text` field"):
        ingest.read_source(spark, str(path))


def test_missing_source_names_the_path(spark, tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        ingest.read_source(spark, str(missing))
    with pytest.raises(FileNotFoundError, match="matches no files"):
        ingest.read_source(spark, str(tmp_path / "*.md"))


def test_default_source_is_package_docs_in_a_fixed_order():
    files = ingest.default_source_files(max_files=40)
    assert len(files) == 40 and files == ingest.default_source_files(max_files=40)
    names = {Path(f).name for f in ingest.default_source_files(max_files=5000)}
    assert "METADATA" in names and any(n.startswith("LICENSE") for n in names)
    assert not names & {"top_level.txt", "entry_points.txt", "RECORD"}
    licensed = licenses.file_licenses(ingest.default_source_files(max_files=5000), sysconfig.get_paths()["purelib"])
    assert any(uri.endswith(".dist-info/METADATA") for uri in licensed)


@pytest.mark.parametrize("data, charset, rule", [
    (b"", None, "empty"), (b"  \n\t ", None, "empty"), (b"ab\x00cd", None, "binary"),
    (b"caf\xe9", None, "invalid_utf8"),
    (b"\xef\xbb\xbfhello", None, None), ("héllo".encode(), None, None), ("héllo".encode(), "UTF8", None),
    ("héllo".encode("latin-1"), "iso-8859-1", None), ("héllo".encode("utf-16"), "utf-16", None),
    (b"caf\xe9", "utf-8", "invalid_utf8"), (b"hello", "x-no-such-charset", "invalid_charset"),
    (b"hello", "base64", "invalid_charset"), (b"\xff\xfe\xfd", "ascii", "invalid_charset"),
    ("a\x00b".encode("utf-16"), "utf-16", "binary"),
])
def test_decode_bytes(data, charset, rule):
    text, got, reason = ingest.decode_bytes(data, charset)
    assert got == rule, reason
    if rule is None:
        assert text in ("hello", "héllo") and reason is None


def test_doc_ids_do_not_depend_on_where_the_source_is_mounted(spark, tmp_path):
    crawl = _warc(gz=True)[0]  # the same record ids in both places

    def mounted_at(root: Path) -> Path:
        src = _source(root)
        (src / "crawl.warc.gz").write_bytes(crawl)
        (src / "records.jsonl").write_text('{"id": 1, "text": "a record"}\n{"text": "no id"}\n')
        return src

    here, _ = _collect(ingest.read_source(spark, str(mounted_at(tmp_path / "laptop")), max_bytes=2000))
    there, _ = _collect(ingest.read_source(spark, str(mounted_at(tmp_path / "cluster" / "mnt")), max_bytes=2000))
    assert set(here["source"]).isdisjoint(there["source"])
    assert sorted(here["doc_id"]) == sorted(there["doc_id"]) and len(here) == 5 + len(KEPT_URLS)
    records = [ingest.read_source(spark, str(root / "records.jsonl")) for root in
               (tmp_path / "laptop" / "src", tmp_path / "cluster" / "mnt" / "src")]
    ids = [sorted(_collect(r)[0]["doc_id"]) for r in records]
    assert ids[0] == ids[1] and len(ids[0]) == 2


# ---------------------------------------------------------------- WARC

PAGE = b"<html><body><p>" + WORDS.encode() + b"</p></body></html>"
LAST = b"<html><body>" + b"<p>The last page of the crawl.</p>" * 20 + b"</body></html>"


def _warc(gz: bool) -> tuple[bytes, list[str], int]:
    """A WARC written by warcio: (bytes, WARC-Record-IDs in order, offset of the last record).

    Documents: the UTF-8 page, the Latin-1 text, the resource, the conversion and the last page.
    """
    buf = io.BytesIO()
    writer = WARCWriter(buf, gzip=gz)

    def http(url: str, body: bytes, content_type: str, status: str = "200 OK", kind: str = "response"):
        headers = StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1")
        return writer.create_warc_record(url, kind, payload=io.BytesIO(body), http_headers=headers)

    def plain(url: str, kind: str, body: bytes, content_type: str):
        return writer.create_warc_record(url, kind, payload=io.BytesIO(body), warc_content_type=content_type)

    records = [
        writer.create_warcinfo_record("crawl.warc", {"software": "tests"}),
        http("http://example.org/page", PAGE, "text/html; charset=utf-8"),
        writer.create_warc_record("http://example.org/page", "request", payload=io.BytesIO(b""),
                                  http_headers=StatusAndHeaders("GET /page HTTP/1.1", [("Host", "example.org")],
                                                                is_http_request=True)),
        http("http://example.org/logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
        http("http://example.org/latin", "Café naïve résumé, déjà vu. ".encode("latin-1") * 3,
             "text/plain; charset=ISO-8859-1"),
        http("http://example.org/missing", b"<html>not found</html>", "text/html", status="404 Not Found"),
        plain("http://example.org/page", "metadata", b"via: http://example.org/\r\n", "application/warc-fields"),
        plain("urn:notes", "resource", ("Notes kept with the crawl. " * 3).encode(), "text/plain; charset=utf-8"),
        plain("http://example.org/page", "conversion", WORDS.encode(), "text/plain"),
        http("http://example.org/empty", b"", "text/html"),
        http("http://example.org/nul", b"text\x00with a NUL", "text/plain"),
        http("http://example.org/klingon", b"<p>qapla</p>", "text/html; charset=x-klingon"),
        http("http://example.org/broken", b"<p>caf\xe9</p>", "text/html"),
        http("http://example.org/last", LAST, "text/html"),
    ]
    for record in records[:-1]:
        writer.write_record(record)
    last = buf.tell()
    writer.write_record(records[-1])
    return buf.getvalue(), [r.rec_headers.get_header("WARC-Record-ID") for r in records], last


KEPT_URLS = ["http://example.org/page", "http://example.org/latin", "urn:notes", "http://example.org/page",
             "http://example.org/last"]
WARC_REJECTS = {"http://example.org/empty": "empty", "http://example.org/nul": "binary",
                "http://example.org/klingon": "invalid_charset", "http://example.org/broken": "invalid_utf8"}


def _cut_last_record(data: bytes, last: int) -> bytes:
    return data[:last + (len(data) - last) // 2]


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_warc_text_records_become_documents_and_others_are_skipped(gz):
    data, ids, _ = _warc(gz)
    rows = pd.DataFrame(ingest.warc_documents(data, "file:///crawls/crawl.warc", max_bytes=2000))

    kept = rows[rows["rule"].isna()]
    assert kept["url"].tolist() == KEPT_URLS
    assert kept["kind"].tolist() == ["html", "txt", "txt", "txt", "html"]
    assert kept["source"].tolist() == [f"file:///crawls/crawl.warc#{ids[i]}" for i in (1, 4, 7, 8, 13)]
    assert kept["source"].str.fullmatch(r"file:///crawls/crawl\.warc#<urn:uuid:[0-9a-f-]{36}>").all()
    page, latin = kept.iloc[0], kept.iloc[1]
    assert page["text"] == PAGE.decode() and page["content_hash"] == hashlib.sha256(PAGE).hexdigest()
    assert page["n_bytes"] == len(PAGE)
    assert latin["text"].startswith("Café naïve résumé")        # decoded with the Content-Type charset
    assert dict(zip(rows.loc[rows["rule"].notna(), "url"], rows.loc[rows["rule"].notna(), "rule"])) == WARC_REJECTS
    assert "x-klingon" in rows.loc[rows["url"] == "http://example.org/klingon", "reason"].item()


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_a_truncated_warc_keeps_its_good_records(gz):
    data, ids, last = _warc(gz)
    rows = pd.DataFrame(ingest.warc_documents(_cut_last_record(data, last), "file:///c/cut.warc", max_bytes=2000))

    assert rows.loc[rows["rule"].isna(), "url"].tolist() == KEPT_URLS[:-1]
    bad = rows[rows["rule"] == "malformed_record"]
    assert len(bad) == 1 and bad["source"].item() == f"file:///c/cut.warc#{ids[-1]}"
    assert re.search("not a complete WARC record" if gz else "record truncated", bad["reason"].item())


def test_warc_corruption_is_quarantined_with_warcios_message():
    data, ids, _ = _warc(gz=False)
    garbage = pd.DataFrame(ingest.warc_documents(data + b"garbage\r\n\r\n", "file:///c/x.warc"))
    assert garbage["url"].dropna().tolist()[-1] == "http://example.org/last"   # everything before it is kept
    bad = garbage[garbage["rule"] == "malformed_record"]
    assert bad["reason"].item() == (f"at byte {len(data)}: ArchiveLoadFailed: Invalid WARC record, "
                                    "first line: garbage")

    flipped = pd.DataFrame(ingest.warc_documents(data.replace(b"Spark reads", b"Spark rEads", 1), "file:///c/x.warc"))
    bad = flipped[flipped["rule"] == "malformed_record"]
    assert bad["url"].item() == "http://example.org/page" and "digest failed" in bad["reason"].item()

    # gzip over the whole file rather than per record: warcio refuses it and says how to fix it
    whole = pd.DataFrame(ingest.warc_documents(gzip.compress(data), "file:///c/x.warc.gz"))
    assert whole["rule"].tolist() == ["malformed_record"] and "warcio recompress" in whole["reason"].item()

    small = pd.DataFrame(ingest.warc_documents(data, "file:///c/x.warc", max_bytes=100))
    oversized = small[small["rule"] == "oversized"]
    assert set(oversized["url"]) == {"http://example.org/page", "http://example.org/last"}
    assert oversized["text"].isna().all() and f"{len(LAST)} bytes > max_bytes 100" in oversized["reason"].iloc[-1]


def test_warc_source_in_spark(spark, tmp_path):
    src = tmp_path / "crawls"
    src.mkdir()
    data, ids, last = _warc(gz=True)
    (src / "crawl.warc.gz").write_bytes(data)
    plain, plain_ids, plain_last = _warc(gz=False)
    (src / "cut.warc").write_bytes(_cut_last_record(plain, plain_last))
    info = io.BytesIO()
    writer = WARCWriter(info, gzip=True)
    writer.write_record(writer.create_warcinfo_record("info.warc", {"software": "tests"}))
    (src / "info.warc.gz").write_bytes(info.getvalue())
    (src / "notes [draft] 100%.txt").write_text(WORDS)  # read by its name, not as a glob or a URI

    result = ingest.read_source(spark, str(src), max_bytes=2000)
    log = result.log.toPandas()
    kept, rejected = _collect(result)

    assert list(kept.columns) == ingest.RAW_COLUMNS and kept["doc_id"].is_unique
    from_warc = kept[kept["source_file"].str.endswith("crawl.warc.gz")]
    assert sorted(from_warc["url"]) == sorted(KEPT_URLS)
    assert set(from_warc["source"]) == {f"file://{src}/crawl.warc.gz#{ids[i]}" for i in (1, 4, 7, 8, 13)}
    assert from_warc["license"].isna().all() and set(from_warc["kind"]) == {"html", "txt"}
    assert len(kept[kept["source_file"].str.endswith("cut.warc")]) == 4
    bad = rejected[rejected["rule"] == "malformed_record"]
    assert bad["source"].tolist() == [f"file://{src}/cut.warc#{plain_ids[-1]}"]
    assert sorted(rejected["rule"]) == sorted([*WARC_REJECTS.values()] * 2 + ["malformed_record"])

    outcome = dict(zip(log["source_file"].map(lambda s: Path(s).name), zip(log["outcome"], log["documents"])))
    assert outcome == {"crawl.warc.gz": ("kept", 5), "cut.warc": ("kept", 4), "info.warc.gz": ("skipped", 0),
                       "notes [draft] 100%.txt": ("kept", 1)}
    assert f"file://{src}/notes [draft] 100%.txt" in set(kept["source"])


def test_a_single_warc_file_is_a_source(spark, tmp_path):
    path = tmp_path / "one.warc.gz"
    path.write_bytes(_warc(gz=True)[0])
    kept, rejected = _collect(ingest.read_source(spark, str(path), max_bytes=2000))
    assert sorted(kept["url"]) == sorted(KEPT_URLS) and len(rejected) == len(WARC_REJECTS)


# ---------------------------------------------------------------- incremental ingest

def _ingest_into(spark, lakehouse: LakehouseResource, source: str) -> tuple[ingest.IngestResult, pd.DataFrame]:
    """What the raw_documents asset does: read what the log has not seen, merge, then append the log.

    Returns the result and the documents this run read.
    """
    seen = lakehouse.read(spark, "ingest_log") if lakehouse.latest("ingest_log") else None
    previous = lakehouse.read(spark, "raw_documents") if seen is not None else None
    result = ingest.read_source(spark, source, max_bytes=2000, seen=seen)
    try:
        read = result.kept.toPandas()
        lakehouse.write(ingest.merge_raw(previous, result), "raw_documents", "test")
        if not result.rejected.isEmpty():
            lakehouse.write(result.rejected, "quarantine", "test", mode="append")
        if result.new_files:
            lakehouse.write(result.log, "ingest_log", "test", mode="append")
    finally:
        result.release()
    return result, read


def test_a_second_run_reads_only_new_and_changed_files(spark, tmp_path):
    lakehouse = LakehouseResource(root=str(tmp_path / "lake"))
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("First version of a. " + WORDS)
    (src / "b.md").write_text("# B\n\n" + WORDS)
    (src / "binary.txt").write_bytes(b"\x00\x01")
    (src / "crawl.warc.gz").write_bytes(_warc(gz=True)[0])
    a_uri = f"file://{src}/a.txt"

    def raw() -> pd.DataFrame:
        return DeltaTable(lakehouse.uri("raw_documents")).to_pandas()

    def log() -> pd.DataFrame:
        return DeltaTable(lakehouse.uri("ingest_log")).to_pandas()

    first, read = _ingest_into(spark, lakehouse, str(src))
    assert (first.listed_files, first.new_files, len(read)) == (4, 4, 2 + 5) and len(raw()) == 7
    logged = log().set_index("source_file")
    assert logged.loc[a_uri, "modified_at"].timestamp() == pytest.approx(os.path.getmtime(src / "a.txt"), abs=0.001)
    assert logged.loc[a_uri, "length"] == (src / "a.txt").stat().st_size

    again, read = _ingest_into(spark, lakehouse, str(src))
    assert (again.listed_files, again.new_files, len(read)) == (4, 0, 0) and len(raw()) == 7

    (src / "c.txt").write_text("A new file. " + WORDS)
    third, read = _ingest_into(spark, lakehouse, str(src))
    assert (third.listed_files, third.new_files) == (5, 1)
    assert read["source_file"].tolist() == [f"file://{src}/c.txt"]
    assert len(log()) == 5 and len(raw()) == 8

    # the same modification time with another length; then the same length with another modification time
    stat = os.stat(src / "a.txt")
    (src / "a.txt").write_text("Second version of a, longer. " + WORDS)
    os.utime(src / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    fourth, read = _ingest_into(spark, lakehouse, str(src))
    assert fourth.new_files == 1 and read["text"].item().startswith("Second version")
    (src / "a.txt").write_text("Third version of a, longer!! " + WORDS)
    os.utime(src / "a.txt", ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    fifth, read = _ingest_into(spark, lakehouse, str(src))
    assert fifth.new_files == 1 and read["text"].item().startswith("Third version")

    table = raw()
    assert len(table) == 8 and table["doc_id"].is_unique
    assert table.loc[table["source_file"] == a_uri, "text"].item().startswith("Third version of a")
    assert log()["source_file"].value_counts()[a_uri] == 3
    assert log().loc[log()["source_file"] == f"file://{src}/binary.txt", "outcome"].tolist() == ["quarantined"]
    assert len(DeltaTable(lakehouse.uri("quarantine")).to_pandas()) == 1 + len(WARC_REJECTS)  # not quarantined twice


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_record_files_are_read_once_each(spark, tmp_path, fmt):
    def write(name: str, texts: list[str]) -> None:
        rows = pd.DataFrame({"id": range(len(texts)), "text": texts})
        if fmt == "jsonl":
            rows.to_json(tmp_path / "records" / f"{name}.jsonl", orient="records", lines=True)
        else:
            rows.to_parquet(tmp_path / "records.parquet" / f"{name}.parquet")

    (tmp_path / ("records" if fmt == "jsonl" else "records.parquet")).mkdir()
    source = str(tmp_path / "records" / "*.jsonl") if fmt == "jsonl" else str(tmp_path / "records.parquet")
    write("part 1", ["one", "two"])
    first = ingest.read_source(spark, source)
    seen = first.log.localCheckpoint()
    assert len(_collect(first)[0]) == 2

    write("part 2", ["three"])
    second = ingest.read_source(spark, source, seen=seen)
    log = second.log.toPandas()
    kept, _ = _collect(second)
    assert (second.listed_files, second.new_files) == (2, 1)
    assert kept["text"].tolist() == ["three"] and kept["source"].item().endswith(f"part 2.{fmt}#0")
    assert log["source_file"].item() == kept["source_file"].item() and log["documents"].item() == 1


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("content", [b"these bytes are not parquet", b""], ids=["garbage", "empty"])
def test_a_corrupt_parquet_file_raises_naming_it(spark, tmp_path, content):
    src = tmp_path / "docs.parquet"
    src.mkdir()
    pd.DataFrame({"text": ["a good document"]}).to_parquet(src / "part-0.parquet")
    (src / "part-1.parquet").write_bytes(content)
    with pytest.raises(ValueError, match=rf"{src}/part-1\.parquet is not a readable Parquet file"):
        ingest.read_source(spark, str(src))


def test_oversized_files_are_quarantined_without_being_read(spark, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "small.txt").write_text(WORDS)
    (src / "big.txt").write_bytes(WORDS.encode() * (50_000_000 // len(WORDS) + 1))   # a real 50 MB document
    # Sparse 3 GiB files: binaryFile cannot load a file over 2 GiB, so reading their content would fail.
    for name in ("huge.txt", "huge.warc.gz"):
        with open(src / name, "wb") as f:
            f.truncate(3 << 30)

    kept, rejected = _collect(ingest.read_source(spark, str(src)))
    assert kept["source"].map(lambda s: Path(s).name).tolist() == ["small.txt"]
    by_file = rejected.set_index(rejected["source"].map(lambda s: Path(s).name))
    assert by_file["rule"].to_dict() == {"big.txt": "oversized", "huge.txt": "oversized", "huge.warc.gz": "oversized"}
    assert by_file.loc["big.txt", "reason"].endswith(f"bytes > max_bytes {ingest.MAX_BYTES}")
    assert "split it" in by_file.loc["huge.warc.gz", "reason"]
    assert by_file["text_preview"].isna().all()


# ---------------------------------------------------------------- licenses

@pytest.mark.parametrize("metadata, expected", [
    ("Metadata-Version: 2.4\nName: a\nLicense-Expression: MIT\nLicense: BSD\n", "MIT"),
    ("Name: a\nLicense: Apache 2.0\nClassifier: License :: OSI Approved :: MIT License\n", "Apache 2.0"),
    ("Name: a\nLicense: Copyright (c) 2024 Someone\n        All rights reserved.\n"
     "Classifier: License :: OSI Approved :: BSD License\n", "BSD License"),
    ("Name: a\nLicense: UNKNOWN\nClassifier: License :: OSI Approved :: MIT License\n"
     "Classifier: Programming Language :: Python\nClassifier: License :: OSI Approved :: Apache Software License\n",
     "MIT License; Apache Software License"),
    ("Name: a\nSummary: says nothing\n\nLicense: MIT, but in the description\n", None),
])
def test_metadata_license(metadata, expected):
    assert licenses.metadata_license(metadata) == expected


def _site_packages(root: Path) -> Path:
    def dist(name: str, metadata: str, record: list[str] | None = None, top_level: str | None = None) -> None:
        info = root / f"{name}.dist-info"
        info.mkdir(parents=True, exist_ok=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\n{metadata}\n\nSome description.\n")
        if record is not None:
            (info / "RECORD").write_text("".join(f"{p},sha256=x,1\n" for p in record))
        if top_level is not None:
            (info / "top_level.txt").write_text(top_level)

    for path in ["alpha/README.md", "alpha-1.0.dist-info/licenses/LICENSE", "beta/docs/guide.rst",
                 "ns/one/README.md", "ns/two/README.md", "ns/NOTES.txt", "orphan/README.md", "gamma/README.md",
                 "alpha/_vendor/tiny-1.0.dist-info/LICENSE"]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(f"Documentation of {path}. " + WORDS)
    dist("alpha-1.0", "License-Expression: MIT",
         ["alpha/__init__.py", "alpha/README.md", "alpha-1.0.dist-info/METADATA"])
    dist("beta-2.0", "Classifier: License :: OSI Approved :: BSD License", top_level="beta\n")
    dist("ns_one-1.0", "License: Apache-2.0", ["ns/one/__init__.py", "ns/one/README.md"])
    dist("ns_two-1.0", "License: MIT", ["ns/two/__init__.py", "ns/two/README.md"])
    dist("gamma-0.1", "License: UNKNOWN", ["gamma/README.md"])
    dist("alpha/_vendor/tiny-1.0", "License: ISC")
    return root


def test_package_docs_carry_their_distributions_license(spark, tmp_path):
    site = _site_packages(tmp_path / "site-packages")
    files = sorted(str(p) for p in site.rglob("*") if p.is_file() and p.name not in ("RECORD", "top_level.txt"))
    found = licenses.file_licenses(files, str(site))
    by_name = {uri.removeprefix(f"file://{site}/"): lic for uri, lic in found.items()}
    assert by_name == {
        "alpha/README.md": "MIT", "alpha-1.0.dist-info/licenses/LICENSE": "MIT", "alpha-1.0.dist-info/METADATA": "MIT",
        "beta/docs/guide.rst": "BSD License", "beta-2.0.dist-info/METADATA": "BSD License",
        "ns/one/README.md": "Apache-2.0", "ns/two/README.md": "MIT",
        "ns_one-1.0.dist-info/METADATA": "Apache-2.0", "ns_two-1.0.dist-info/METADATA": "MIT",
        "alpha/_vendor/tiny-1.0.dist-info/LICENSE": "ISC", "alpha/_vendor/tiny-1.0.dist-info/METADATA": "ISC",
    }  # ns/NOTES.txt has two owners, orphan/ none, gamma declares none

    result = ingest.read_files(spark, spark.read.format("binaryFile").load(files), ingest.source_roots(str(site)),
                               licenses=found)
    kept, _ = _collect(result)
    assert dict(zip(kept["source_file"], kept["license"].where(kept["license"].notna(), None))) == {
        f"file://{p}": found.get(f"file://{p}") for p in files}


def test_seen_must_be_an_ingest_log(spark, tmp_path):
    (tmp_path / "a.txt").write_text(WORDS)
    with pytest.raises(ValueError, match=r"not an ingest log: it lacks \['length', 'modified_at'\]"):
        ingest.read_source(spark, str(tmp_path), seen=spark.createDataFrame([("x",)], "source_file string"))
