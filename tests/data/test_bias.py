"""Bias and composition: demographic term counts, sampled toxicity with its interval, the report asset."""

import json
import re

import dagster as dg
import pytest

from llm_assets.data import bias


def test_demographic_counts_are_whole_words_and_case_insensitive(spark):
    docs = spark.createDataFrame([("a", "She said her sister's code works. He agreed."),
                                  ("b", "The shell hides HIS history; mankind and women alike.")],
                                 "doc_id string, text string")
    counts = bias.demographic_counts(docs, bias.DEFAULT_LEXICON)
    assert counts == {"female": 2 + 1, "male": 2}  # she, her, women / he, his ("shell", "mankind": no)
    assert bias.shares(counts) == {"female": 0.6, "male": 0.4}
    assert bias.shares({"female": 0, "male": 0}) == {"female": 0.0, "male": 0.0}


def test_wilson_interval_brackets_the_rate():
    low, high = bias.wilson_interval(5, 100)
    assert low < 0.05 < high and high - low < 0.1
    assert bias.wilson_interval(0, 0) == (0.0, 1.0)
    assert bias.wilson_interval(0, 50)[0] == 0.0


def test_toxicity_scores_a_stable_sample(spark):
    rows = [(f"clean{i}", "The library reads the configuration file and prints a report.") for i in range(8)]
    rows += [("rude", "you are a fucking idiot and a piece of shit")]
    docs = spark.createDataFrame(rows, "doc_id string, text string")
    everything = bias.toxicity(docs, sample=100, threshold=0.5)
    assert (everything["sampled"], everything["toxic"]) == (9, 1)
    assert everything["rate"] == pytest.approx(1 / 9)
    assert bias.toxicity(docs, sample=4, threshold=0.5) == bias.toxicity(docs.repartition(3), sample=4,
                                                                          threshold=0.5)


def test_comparison_shows_the_change_since_the_parent():
    now = {"documents": 12, "chars": 900, "toxicity_rate": 0.1, "groups": ["female"], "share_female": 0.25}
    md = bias.comparison_markdown(now, {**now, "documents": 10, "share_female": 0.5})
    assert "| documents | 10 | 12 | +2 |" in md and "| female term share | 0.5 | 0.25 | -0.25 |" in md
    assert "| documents | - | 12 | - |" in bias.comparison_markdown(now, None)


def test_corpus_report_asset_writes_plot_and_compares_versions(llmops_resources, home, tmp_path):
    from llm_assets.data.assets import cleaned_corpus, corpus_report, curated_corpus, deduped_corpus, raw_documents
    from resources.settings import SettingsResource
    from tests.corpus import write_corpus

    source = write_corpus(tmp_path / "source", docs=10)
    resources = {**llmops_resources, "settings": SettingsResource(home=str(home), source=str(source))}
    assets = [raw_documents, cleaned_corpus, deduped_corpus, curated_corpus, corpus_report]
    config = {"ops": {"cleaned_corpus": {"config": {"quality_filters": "none"}}}}
    first = dg.materialize(assets, resources=resources, run_config=config)
    (source / "extra.md").write_text("# Her notes\n\n" + "She wrote the guide and her team reviewed it. " * 10)
    second = dg.materialize(assets, resources=resources, run_config=config)
    (report,) = second.asset_materializations_for_node("corpus_report")
    meta = {k: v.value for k, v in report.metadata.items()}
    assert meta["plot"].startswith("![composition](data:image/png;base64,")
    stored = json.loads((home / "reports" / "corpus" / f"{meta['data_commit']}.json").read_text())
    (before,) = first.asset_materializations_for_node("corpus_report")
    assert stored["documents"] == before.metadata["documents"].value + 1
    assert "| documents |" in meta["change_since_parent"] and "| +1 |" in meta["change_since_parent"]
    assert stored["demographic_counts"]["female"] >= 20 and 0 < meta["share_female"] <= 1
    assert meta["quality_plot"].startswith("![quality scores](data:image/png;base64,")
    assert meta["quality_scored"] == stored["quality"]["documents"] == stored["documents"]
    words = stored["quality"]["quantiles"]["gopher_words"]
    assert 0 < words["p10"] <= words["p50"] <= words["p90"] and stored["median_gopher_words"] == words["p50"]
    assert "| `gopher_rep_dup_line_frac` |" in meta["quality_scores"]
    assert re.search(r"\| median gopher_words \| [\d,.]+ \| [\d,.]+ \| [+-]", meta["change_since_parent"])
