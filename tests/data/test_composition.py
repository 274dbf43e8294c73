"""Composition: the summary of a curated frame."""

import pandas as pd

from llm_assets.data import composition


def test_composition_summary_and_markdown(spark):
    docs = spark.createDataFrame(pd.DataFrame({
        "kind": ["md", "md", "license", "txt"],
        "language": ["en", "en", "en", "de"],
        "n_chars": [100, 200, 300, 400],
    }))
    summary = composition.summarize(docs)
    assert summary["documents"] == 4 and summary["chars"] == 1000
    assert summary["by_kind"] == {"md": 2, "license": 1, "txt": 1}
    assert summary["by_language"] == {"en": 3, "de": 1}
    assert summary["n_chars_quantiles"]["min"] == 100 and summary["n_chars_quantiles"]["max"] == 400
    md = composition.composition_markdown(summary)
    assert "| md | 2 | 50.0% |" in md and "| de | 1 | 25.0% |" in md

