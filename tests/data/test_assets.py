"""End to end: the four data assets and their Great Expectations check on real Spark and Delta."""

import json
from pathlib import Path

import dagster as dg
import pandas as pd
from deltalake import DeltaTable

from llm_assets.data.assets import cleaned_corpus, curated_corpus, deduped_corpus, raw_documents
from llm_assets.data import accounting
from llm_assets.data.checks import (cleaned_corpus_expectations, curated_corpus_accounting,
                                    curated_corpus_expectations, deduped_corpus_expectations,
                                    raw_documents_expectations)
from llm_assets.data.pii import EMAIL
from resources.settings import SettingsResource
from tests.corpus import write_corpus

TABLES = ["raw_documents", "cleaned_corpus", "deduped_corpus", "curated_corpus", "quarantine"]


def _materialize(resources):
    return dg.materialize(
        [raw_documents, cleaned_corpus, deduped_corpus, curated_corpus, raw_documents_expectations,
         cleaned_corpus_expectations, deduped_corpus_expectations, curated_corpus_expectations,
         curated_corpus_accounting],
        resources=resources,
        run_config={"ops": {"raw_documents": {"config": {"max_bytes": 20_000}},
                            "cleaned_corpus": {"config": {"quality_filters": "none"}}}},  # tests.corpus repeats paragraphs
    )


def _meta(result, asset: str) -> dict:
    (mat,) = result.asset_materializations_for_node(asset)
    return {k: v.value for k, v in mat.metadata.items()}


def _read(home, table: str, version: int | None = None) -> pd.DataFrame:
    df = DeltaTable(str(home / "lakehouse" / table), version=version).to_pandas()
    return df.sort_values(list(df.columns[:2])).reset_index(drop=True)


def test_data_stage_materializes_versions_and_commits(llmops_resources, home, tmp_path):
    source = write_corpus(tmp_path / "source", docs=12)
    (source / "server.md").write_text("# Servers\n\n" + "The staging server at 10.1.2.3 serves the "
                                      "documentation site for the whole team every day. " * 4)
    (source / "huge.txt").write_text("A very long line of text. " * 1000)
    resources = {**llmops_resources, "settings": SettingsResource(home=str(home), source=str(source))}

    first = _materialize(resources)
    assert first.success
    tables = {t: _read(home, t) for t in TABLES}

    raw, curated, quarantine = tables["raw_documents"], tables["curated_corpus"], tables["quarantine"]
    assert len(raw) == 14  # 12 docs, the copy, server.md
    assert {"doc_id", "source", "text", "n_chars", "language"} <= set(curated.columns)
    assert curated["doc_id"].is_unique and not curated["text"].str.contains(EMAIL).any()
    server = curated["source"].str.endswith("server.md")
    assert curated.loc[~server, "text"].str.contains("<EMAIL>").all()
    assert curated.loc[server, "text"].str.contains("<IP_ADDRESS>").all()
    assert set(curated["language"]) == {"en"}
    rules = quarantine.groupby(["step", "rule"]).size().to_dict()
    assert rules == {("raw_documents", "binary"): 1, ("raw_documents", "empty"): 1,
                     ("raw_documents", "invalid_utf8"): 1, ("raw_documents", "oversized"): 1,
                     ("deduped_corpus", "exact_duplicate"): 1, ("deduped_corpus", "near_duplicate"): 4}
    assert len(tables["deduped_corpus"]) == len(curated) == 14 - 5

    meta = _meta(first, "curated_corpus")
    # write_corpus repeats each document three times, its e-mail and phone number with it
    assert meta["rows"] == len(curated) and meta["pii_email"] == meta["pii_phone"] == 3 * (len(curated) - 1)
    assert meta["pii_ip_address"] == 4
    assert "| md |" in meta["composition"]
    commit = llmops_resources["versioning"].get_commit(meta["data_commit"])
    assert {name: t["delta_version"] for name, t in commit["tables"].items()} == {t: 0 for t in TABLES[:4]} | {
        "quarantine": 1}  # raw_documents and deduped_corpus each appended to quarantine
    dedup_meta = _meta(first, "deduped_corpus")
    assert (dedup_meta["exact_removed"], dedup_meta["near_removed"], dedup_meta["clusters"]) == (1, 4, 4)
    checks = {c.check_name: c for c in first.get_asset_check_evaluations()}
    gx = checks["curated_corpus_expectations"]
    assert gx.passed and gx.metadata["rows"].value == len(curated)
    assert all(checks[f"{t}_expectations"].passed for t in TABLES[:4])
    saved = json.loads(Path(checks["deduped_corpus_expectations"].metadata["validation_result"].value).read_text())
    assert saved["success"] and "expect_column_values_to_be_unique(text_hash)" in {
        r["expectation"] for r in saved["results"]}
    books = checks["curated_corpus_accounting"]
    assert books.passed and books.metadata["rows_in"].value == len(raw) - 0  # cleaning rejected nothing here
    assert "| deduped_corpus | cleaned_corpus@0 | 14 | 9 | 5 | yes |" in books.metadata["steps"].value
    lake = llmops_resources["lakehouse"]
    chain = accounting.lineage(lake, lake.latest("curated_corpus"))
    assert [t.name for t in chain] == TABLES[3::-1]
    unbooked = accounting.step_balances(chain, quarantine_uri=None)  # as if the quarantine were lost
    assert [b.asset for b in unbooked if not b.balanced] == ["deduped_corpus"]

    second = _materialize(resources)  # the source is unchanged: raw_documents reads no file again
    assert second.success
    assert _meta(second, "raw_documents")["new_files"] == 0
    meta2 = _meta(second, "curated_corpus")
    assert meta2["data_commit"] != meta["data_commit"]
    commit2 = llmops_resources["versioning"].get_commit(meta2["data_commit"])
    assert commit2["parent"] == meta["data_commit"]
    assert commit2["tables"]["curated_corpus"]["delta_version"] == 1
    assert commit2["tables"]["raw_documents"]["delta_version"] == 0
    assert commit2["tables"]["quarantine"]["delta_version"] == 2  # only dedup appended this time
    for table in TABLES[1:4]:
        assert DeltaTable(str(home / "lakehouse" / table)).version() == 1
        pd.testing.assert_frame_equal(_read(home, table, version=0), tables[table])
    dedup_rows = len(quarantine[quarantine["asset"] == "deduped_corpus"])
    assert len(_read(home, "quarantine")) == len(quarantine) + dedup_rows  # appended, not replaced

    (source / "new.md").write_text("# New\n\n" + "A fresh page about how the gateway batches requests. " * 6)
    third = _materialize(resources)
    raw3 = _meta(third, "raw_documents")
    assert (raw3["new_files"], raw3["rows"]) == (1, len(raw) + 1)
    assert (home / "lakehouse" / "ingest_log").exists()
