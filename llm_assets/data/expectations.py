"""The Great Expectations suite that gates the curated corpus, and the plain function that runs it.

`validate_corpus` builds an ephemeral GX context (nothing written to disk), validates a Spark or
pandas DataFrame against `corpus_suite` and returns a `SuiteReport`; the asset check in `checks.py`
only turns that report into an `AssetCheckResult`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.data_context.types.base import ProgressBarsConfig

from llm_assets.data.pii import EMAIL_REGEX

REQUIRED_COLUMNS = ("doc_id", "source", "text", "n_chars", "language")
MIN_CHARS = 1
MAX_CHARS = 2_000_000


def corpus_suite(min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> gx.ExpectationSuite:
    """Columns exist, doc_id present and unique, text present, n_chars in bounds, no e-mail left."""
    suite = gx.ExpectationSuite(name="curated_corpus")
    for column in REQUIRED_COLUMNS:
        suite.add_expectation(gxe.ExpectColumnToExist(column=column))
    suite.add_expectation(gxe.ExpectTableRowCountToBeBetween(min_value=1))
    suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="doc_id"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="doc_id"))
    suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="text"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="n_chars", min_value=min_chars, max_value=max_chars))
    # The same pattern the scrubber replaces; it means the same in Python's re and Java's regex.
    suite.add_expectation(gxe.ExpectColumnValuesToNotMatchRegex(column="text", regex=EMAIL_REGEX))
    return suite


@dataclass
class SuiteReport:
    """Outcome of one validation: overall pass, one entry per expectation, and the row count."""

    passed: bool
    rows: int
    results: list[dict] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        return [r["expectation"] for r in self.results if not r["success"]]


def _summary(result) -> dict:
    cfg = result.expectation_config
    kwargs = {k: v for k, v in cfg.kwargs.items() if k not in ("batch_id",)}
    target = kwargs.get("column", "table")
    out = {"expectation": f"{cfg.type}({target})", "success": bool(result.success), "kwargs": kwargs}
    res = result.result or {}
    for key in ("observed_value", "element_count", "unexpected_count", "unexpected_percent"):
        if res.get(key) is not None:
            out[key] = res[key]
    if res.get("partial_unexpected_list"):
        out["examples"] = [str(v)[:80] for v in res["partial_unexpected_list"][:3]]
    exc = (result.exception_info or {}) if hasattr(result, "exception_info") else {}
    if exc.get("raised_exception"):
        out["exception"] = str(exc.get("exception_message"))[:300]
    return out


def validate_corpus(df, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> SuiteReport:
    """Validate a curated corpus (Spark or pandas DataFrame) against `corpus_suite`."""
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    if isinstance(df, pd.DataFrame):
        source = context.data_sources.add_pandas("corpus")
        rows = len(df)
    else:
        source = context.data_sources.add_spark("corpus")
        rows = df.count()
    batch_def = source.add_dataframe_asset("curated_corpus").add_batch_definition_whole_dataframe("all")
    batch = batch_def.get_batch(batch_parameters={"dataframe": df})
    validation = batch.validate(corpus_suite(min_chars, max_chars))
    results = [_summary(r) for r in validation.results]
    return SuiteReport(passed=bool(validation.success), rows=rows, results=results)
