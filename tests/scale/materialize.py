"""Materialize the data and token-shard assets with resources from the environment; print what they kept.

    SPARK_MASTER=spark://127.0.0.1:7077 LLMOPS_HOME=/tmp/h LLMOPS_SOURCE=/tmp/src python -m tests.scale.materialize

Run in its own process: a process holds one classic SparkContext, so a test process that already runs
a local session cannot also drive a cluster. The last stdout line is JSON: the doc ids of each Delta
table (read back by delta-rs), the quarantine's (doc_id, rule) pairs, the tokenizer hash, the shard
sha256 list per split, and where the Spark session ran.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
from deltalake import DeltaTable

from llm_assets.data.assets import cleaned_corpus, curated_corpus, deduped_corpus, raw_documents
from llm_assets.tokens.assets import token_shards, tokenizer
from resources import build_resources

TABLES = ["raw_documents", "cleaned_corpus", "deduped_corpus", "curated_corpus"]
CONFIG = {"ops": {
    "cleaned_corpus": {"config": {"quality_filters": "none"}},  # tests.corpus repeats paragraphs on purpose
    "tokenizer": {"config": {"vocab_size": 400}},
    "token_shards": {"config": {"seq_len": 32, "sequences_per_shard": 8, "validation_fraction": 0.3}},
}}


def _column(uri: Path, *columns: str) -> list:
    table = DeltaTable(str(uri)).to_pyarrow_table(columns=list(columns))
    return sorted(zip(*(table.column(c).to_pylist() for c in columns)))


def main() -> None:
    resources = build_resources()
    session = resources["spark"].session()
    where = {"session": type(session).__module__, "master": session.conf.get("spark.master")}
    result = dg.materialize([raw_documents, cleaned_corpus, deduped_corpus, curated_corpus, tokenizer, token_shards],
                            resources=resources, run_config=CONFIG)
    lake = Path(resources["lakehouse"].root)
    (shards,) = result.asset_materializations_for_node("token_shards")
    manifest = json.loads(Path(shards.metadata["manifest"].value).read_text())
    print(json.dumps({
        **where,
        "doc_ids": {t: [d for (d,) in _column(lake / t, "doc_id")] for t in TABLES},
        "quarantine": _column(lake / "quarantine", "doc_id", "rule"),
        "tokenizer_sha256": manifest["tokenizer_sha256"],
        "shards": {split: [e["sha256"] for e in entries] for split, entries in manifest["splits"].items()},
    }), flush=True)
    session.stop()


if __name__ == "__main__":
    main()
