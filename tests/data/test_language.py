"""Language identification: lingua's label per document, `unknown` for code and low confidence."""

import pytest

from llm_assets.data import language


@pytest.mark.parametrize("text, expected", [
    ("The package is installed and the tests are run for each of the versions.", "en"),
    ("Die Daten werden in der Tabelle gespeichert und nicht gelöscht.", "de"),
    ("Les données sont écrites dans la table et ne sont pas effacées.", "fr"),
    ("Los datos se escriben en la tabla y no se borran nunca.", "es"),
    ("これはテストの文章です。", "ja"),
    ("Привет, это простой текст на русском языке.", "ru"),
    ("x = f(y) + g(z); return x[0] * 2 # 1, 2, 3", "unknown"),
    ("", "unknown"),
    (None, "unknown"),
])
def test_detect_language(text, expected):
    assert language.detect_language(text) == expected


def test_with_language_on_spark(spark):
    docs = spark.createDataFrame([("a", "The server answers requests over HTTP and reports its health."),
                                  ("b", "Der Server beantwortet Anfragen und meldet seinen Zustand.")],
                                 "doc_id string, text string")
    assert {r.doc_id: r.language for r in language.with_language(docs).collect()} == {"a": "en", "b": "de"}
