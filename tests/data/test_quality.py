"""Quality scores: the filters' statistics as numbers per document, their quantiles on Spark, table and plot."""

import math

import pytest

from llm_assets.data import bias, filters, quality
from llm_assets.data.filters import SCORES, quality_scores
from tests.data.test_filters import GOOD, LINES

REPEATED = "\n".join([LINES[0]] * 8 + [LINES[1], LINES[2]])
SYMBOLS = " ".join(["{ } => [0x1f, 0x2e] :: <T> && || == 42 ;"] * 10)


def test_scores_measure_what_the_filters_judge():
    prose, repeated, symbols = quality_scores(GOOD), quality_scores(REPEATED), quality_scores(SYMBOLS)
    assert tuple(prose) == SCORES
    assert prose["gopher_rep_dup_line_frac"] == 0 and repeated["gopher_rep_dup_line_frac"] == pytest.approx(0.7)
    assert repeated["fineweb_char_dup_ratio"] > 0.5 > prose["fineweb_char_dup_ratio"]
    assert prose["gopher_alpha_words_ratio"] > 0.8 > 0.5 > symbols["gopher_alpha_words_ratio"]
    assert prose["gopher_stop_words"] >= 2 and symbols["gopher_stop_words"] == 0
    assert prose["fineweb_line_punct_ratio"] == 1.0 and symbols["fineweb_line_punct_ratio"] == 0.0
    assert 3 < prose["gopher_mean_word_length"] < 10


def test_scores_are_the_numbers_in_the_filters_reasons():
    text = "\n".join([LINES[0], LINES[1], LINES[0], LINES[1], LINES[2]])
    assert filters.gopher_repetition(text) == ("gopher_rep_dup_line_frac", "repeated lines 0.400 > dup_line_frac 0.3")
    assert quality_scores(text)["gopher_rep_dup_line_frac"] == 0.4
    assert filters.gopher_quality("Too short to keep.")[1].startswith("4 words")
    assert quality_scores("Too short to keep.")["gopher_words"] == 4
    text = " ".join(f"big data {w}" for w in GOOD.split())
    assert quality_scores(text)["gopher_rep_top_2_gram"] == pytest.approx(8 * 87 / len(text))


def test_an_empty_document_has_no_ratios():
    scores = quality_scores("")
    assert scores["gopher_words"] == 0 and scores["gopher_rep_dup_line_frac"] == 0
    assert math.isnan(scores["gopher_mean_word_length"]) and math.isnan(scores["fineweb_line_punct_ratio"])


@pytest.fixture(scope="module")
def docs(spark):
    texts = [GOOD, REPEATED, SYMBOLS, "", GOOD.replace("mill", "bakery"), "\n\n".join(LINES)]
    return spark.createDataFrame([(f"d{i}", t) for i, t in enumerate(texts)], "doc_id string, text string")


def test_score_documents_on_spark(docs):
    rows = {r["doc_id"]: r for r in quality.score_documents(docs.repartition(3)).collect()}
    assert set(rows) == {f"d{i}" for i in range(6)}
    assert rows["d1"]["gopher_rep_dup_line_frac"] == pytest.approx(0.7)
    assert rows["d0"]["gopher_alpha_words_ratio"] > rows["d2"]["gopher_alpha_words_ratio"]
    assert rows["d3"]["gopher_mean_word_length"] is None  # nan in Python, null in Spark
    sampled = quality.score_documents(docs, sample=2)
    assert sampled.count() == 2
    assert sorted(r["doc_id"] for r in sampled.collect()) == \
        sorted(r["doc_id"] for r in quality.score_documents(docs.repartition(2), sample=2).collect())


def test_summarize_quality_quantiles_table_and_plot(docs, tmp_path):
    summary, plotted = quality.summarize_quality(docs)
    assert summary["documents"] == 6 and summary["sample"] == 0
    assert set(summary["quantiles"]) == set(SCORES)
    for name, q in summary["quantiles"].items():
        assert q["p10"] <= q["p50"] <= q["p90"], name  # no score is null everywhere here; nulls are left out
    assert summary["quantiles"]["gopher_rep_dup_line_frac"]["p90"] == pytest.approx(0.7)
    assert summary["quantiles"]["gopher_alpha_words_ratio"]["p10"] == \
        pytest.approx(quality_scores(SYMBOLS)["gopher_alpha_words_ratio"])  # the lowest of 5 (d3 has none)
    assert list(plotted.columns) == list(quality.PLOTTED) and len(plotted) == 6
    table = quality.quality_markdown(summary)
    assert "of all 6 documents" in table and "| `gopher_rep_dup_line_frac` | 0 | 0 | 0.7 |" in table
    assert "sampled" in quality.quality_markdown(quality.summarize_quality(docs, sample=3)[0])
    head = quality.headline(summary)
    assert head["scores"] == list(SCORES) and head["median_gopher_rep_dup_line_frac"] == 0
    png = bias.quality_plot(plotted, tmp_path / "q.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_shows_score_medians():
    now = {"documents": 3, "chars": 90, "toxicity_rate": 0.0, "scores": ["gopher_words"], "median_gopher_words": 120.0}
    md = bias.comparison_markdown(now, {**now, "median_gopher_words": 100.0})
    assert "| median gopher_words | 100 | 120 | +20 |" in md
    assert "| median gopher_words | - | 120 | - |" in bias.comparison_markdown(now, {"documents": 2})
