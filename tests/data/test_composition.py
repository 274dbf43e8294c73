"""Composition: the language heuristic and the summary of a curated frame."""

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


def test_language_heuristic():
    assert composition.detect_language("The package is installed and the tests are run for each of the versions.") == "en"
    assert composition.detect_language("Die Daten werden in der Tabelle gespeichert und nicht gelöscht.") == "de"
    assert composition.detect_language("Les données sont écrites dans la table et ne sont pas effacées.") == "fr"
    assert composition.detect_language("これはテストの文章です。") == "ja"
    assert composition.detect_language("Привет, это простой текст на русском языке.") == "ru"
    assert composition.detect_language("x = f(y) + g(z); return x") == "unknown"
