"""Ingest: good files become rows, bad files are quarantined with their reason, bad sources raise."""

from pathlib import Path

import pandas as pd
import pytest
from deltalake import DeltaTable

from llm_assets.data import ingest
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


def test_raw_rows_and_rejects_round_trip_through_delta(spark, tmp_path):
    lakehouse = LakehouseResource(root=str(tmp_path / "lake"))
    result = ingest.read_source(spark, str(_source(tmp_path)), max_bytes=2000)
    raw = lakehouse.write(result.kept, "raw_documents", "test")
    lakehouse.write(result.rejected, "quarantine", "test", mode="append")
    result.release()

    table = DeltaTable(raw.uri).to_pandas()
    assert len(table) == raw.rows == 5
    schema = {f.name: f.type.type for f in DeltaTable(raw.uri).schema().fields}
    assert schema == {"doc_id": "string", "source": "string", "kind": "string", "text": "string",
                      "content_hash": "string", "n_bytes": "long", "ingested_at": "timestamp"}
    assert len(DeltaTable(lakehouse.uri("quarantine")).to_pandas()) == 4


def test_glob_source_reads_only_what_it_matches(spark, tmp_path):
    src = _source(tmp_path)
    kept, rejected = _collect(ingest.read_source(spark, str(src / "*.md")))
    assert sorted(Path(s).name for s in kept["source"]) == ["guide.md"]
    assert rejected["rule"].tolist() == ["empty"]


def test_jsonl_source(spark, tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join([
        '{"id": 1, "text": "first document text"}',
        '{"id": "b", "text": "second document text", "source": "https://example.org/b"}',
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


@pytest.mark.parametrize("data, rule", [
    (b"", "empty"), (b"  \n\t ", "empty"), (b"ab\x00cd", "binary"), (b"caf\xe9", "invalid_utf8"),
    (b"\xef\xbb\xbfhello", None), ("héllo".encode(), None),
])
def test_decode_bytes(data, rule):
    text, got, reason = ingest.decode_bytes(data)
    assert got == rule
    if rule is None:
        assert text in ("hello", "héllo") and reason is None


def test_doc_ids_do_not_depend_on_where_the_source_is_mounted(spark, tmp_path):
    here, _ = _collect(ingest.read_source(spark, str(_source(tmp_path / "laptop")), max_bytes=2000))
    there, _ = _collect(ingest.read_source(spark, str(_source(tmp_path / "cluster" / "mnt")), max_bytes=2000))
    assert set(here["source"]).isdisjoint(there["source"])
    assert sorted(here["doc_id"]) == sorted(there["doc_id"])
