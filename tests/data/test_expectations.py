"""The Great Expectations suite on the curated corpus: passes on good data, names what fails."""

import pandas as pd

from llm_assets.data import expectations


def _corpus(**overrides) -> pd.DataFrame:
    df = pd.DataFrame({
        "doc_id": ["d1", "d2", "d3"],
        "source": ["file:///a.md", "file:///b.md", "file:///c.txt"],
        "text": ["Install the package with pip.", "Write to <EMAIL> for help.", "Plain text."],
        "n_chars": [29, 26, 11],
        "language": ["en", "en", "unknown"],
    })
    for column, values in overrides.items():
        df[column] = values
    return df


def test_suite_passes_on_good_data(spark):
    report = expectations.validate_corpus(spark.createDataFrame(_corpus()))
    assert report.passed, report.results
    assert report.rows == 3 and not report.failed
    assert len(report.results) == len(expectations.REQUIRED_COLUMNS) + 6


def test_suite_fails_on_a_duplicate_doc_id_or_a_leftover_email(spark):
    report = expectations.validate_corpus(spark.createDataFrame(_corpus(
        doc_id=["d1", "d1", "d3"],
        text=["Install the package with pip.", "Write to help@example.org for help.", "Plain text."])))
    assert not report.passed
    assert sorted(report.failed) == ["expect_column_values_to_be_unique(doc_id)",
                                     "expect_column_values_to_not_match_regex(text)"]
    email = next(r for r in report.results if r["expectation"].endswith("not_match_regex(text)"))
    assert email["unexpected_count"] == 1 and "help@example.org" in email["examples"][0]


def test_suite_fails_on_a_missing_column_and_out_of_bounds_lengths():
    df = _corpus(n_chars=[29, 0, 11]).drop(columns=["language"])
    report = expectations.validate_corpus(df, min_chars=1, max_chars=100)
    assert set(report.failed) == {"expect_column_to_exist(language)",
                                  "expect_column_values_to_be_between(n_chars)"}
