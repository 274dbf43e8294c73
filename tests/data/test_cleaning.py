"""Cleaning: markup and broken text repaired on literal texts; each quality rule names its rejects."""

import pytest

from llm_assets.data import cleaning
from llm_assets.data.cleaning import QualityRules, clean_text, quality_rule

PROSE = ("The package reads a configuration file, checks every option and prints a short report "
         "that explains what it found and what it would change. ")


def test_ftfy_repairs_mojibake_and_text_is_nfc():
    assert clean_text("The cafÃ© serves crÃ¨me brÃ»lÃ©e") == "The café serves crème brûlée"
    decomposed = "re\u0301sume\u0301"
    assert clean_text(decomposed) == "r\u00e9sum\u00e9"


def test_whitespace_is_normalized():
    assert clean_text("  a \t b  \r\n\r\n\r\n\n c  \n") == "a b\n\nc"


def test_html_is_stripped_to_its_text():
    html = ("<html><head><style>p {color: red}</style><script>alert(1)</script></head>"
            "<body><h1>Title</h1><p>Fish &amp; chips, <b>hot</b>.</p></body></html>")
    assert clean_text(html, "html") == "Title\nFish & chips,\nhot\n."


def test_markdown_markup_is_lightened():
    md = ("# Install\n\n[![build](https://ci/badge.svg)](https://ci)\n<p align=\"center\">Logo</p>\n\n"
          "Run **pip install pkg**, see [the docs](https://docs.example.org) and `pkg --help`.\n\n"
          "```bash\npkg run\n```\n\n[ref]: https://example.org\n")
    assert clean_text(md, "md") == ("Install\n\nbuild\nLogo\n\nRun pip install pkg, see the docs and pkg --help.\n\n"
                                    "pkg run")


def test_rst_markup_is_lightened():
    rst = ("Usage\n=====\n\n.. code-block:: python\n\n   import pkg\n\n"
           "Call :func:`pkg.run` or read `the guide <https://example.org>`_ and ``pkg.cfg``.\n"
           ".. _target:\n")
    assert clean_text(rst, "rst") == "Usage\n\nimport pkg\n\nCall pkg.run or read the guide and pkg.cfg."


def test_package_metadata_keeps_readable_fields_only():
    meta = ("Metadata-Version: 2.1\nName: pkg\nSummary: Does things\nClassifier: Python\n"
            "Requires-Dist: numpy\n\n# pkg\n\nLong **description**.")
    assert clean_text(meta, "metadata") == "Name: pkg\nSummary: Does things\n\npkg\n\nLong description."


@pytest.mark.parametrize("text, rule", [
    ("", "empty"),
    ("just a few words here", "too_few_words"),
    ("{}[]()<>;:=+-*/ " * 10 + PROSE, "symbol_ratio"),
    (" ".join(str(1000 + i) for i in range(60)) + " " + PROSE, "alpha_words"),
    (" ".join(f"{i / 7:.4e}" for i in range(60)) + " " + PROSE, "alpha_words"),  # 1.4286e-01: not a word
    (" ".join("abcdefghijklmnopqrstuvwxyz" for _ in range(30)), "word_length"),
    ("\n".join([PROSE] * 9 + ["a final different line of the document"]), "repeated_lines"),
    (PROSE * 3, None),
])
def test_quality_rules(text, rule):
    verdict = quality_rule(text, QualityRules())
    assert (verdict[0] if verdict else None) == rule
    if verdict:
        assert verdict[1]  # a reason with the measured value


def test_thresholds_come_from_the_rules():
    assert quality_rule(PROSE, QualityRules(min_words=5)) is None
    assert quality_rule(PROSE, QualityRules(min_words=100))[0] == "too_few_words"
    assert quality_rule(PROSE * 20, QualityRules(max_words=50))[0] == "too_many_words"


def test_clean_documents_on_spark_quarantines_with_rule_names(spark):
    raw = spark.createDataFrame([
        ("a", "file:///a.md", "md", "# Title\n\n" + PROSE * 2, "ha"),
        ("b", "file:///b.txt", "txt", "too short", "hb"),
        ("c", "file:///c.html", "html", "<p>" + "&lt;&gt; {} [] ;; == " * 20 + "</p>", "hc"),
        ("d", "file:///d.txt", "txt", "   \n  ", "hd"),
    ], "doc_id string, source string, kind string, text string, content_hash string")
    result = cleaning.clean_documents(raw, QualityRules())
    kept, rejected = result.kept.toPandas(), result.rejected.toPandas()
    result.release()

    assert list(kept.columns) == cleaning.CLEANED_COLUMNS
    assert kept["doc_id"].tolist() == ["a"]
    row = kept.iloc[0]
    assert row["text"].startswith("Title\n\nThe package") and row["n_chars"] == len(row["text"])
    assert row["n_words"] == len(row["text"].split())
    assert dict(zip(rejected["doc_id"], rejected["rule"])) == {"b": "too_few_words", "c": "symbol_ratio",
                                                               "d": "empty"}
    assert set(rejected["step"]) == {"cleaned_corpus"}
    assert rejected.set_index("doc_id").loc["b", "text_preview"] == "too short"


def test_documents_outside_the_kept_languages_are_quarantined(spark):
    german = ("Die Bibliothek liest eine Konfigurationsdatei, prüft jede Option und schreibt einen kurzen "
              "Bericht, der erklärt, was sie gefunden hat und was sie ändern würde. ") * 2
    raw = spark.createDataFrame([("en", "file:///en.txt", "txt", PROSE * 2, "h1"),
                                 ("de", "file:///de.txt", "txt", german, "h2")],
                                "doc_id string, source string, kind string, text string, content_hash string")
    everything = cleaning.clean_documents(raw, QualityRules())
    assert dict(everything.kept.select("doc_id", "language").collect()) == {"en": "en", "de": "de"}
    everything.release()
    english = cleaning.clean_documents(raw, QualityRules(), languages=("en",))
    rejected = english.rejected.toPandas()
    assert [r.doc_id for r in english.kept.collect()] == ["en"]
    assert rejected[["doc_id", "rule"]].values.tolist() == [["de", "language"]]
    assert "language de not in kept languages ['en']" in rejected["reason"][0]
    english.release()
