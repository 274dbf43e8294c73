"""Quality gates on the data stage: the Great Expectations suite on the curated corpus (blocking)."""

import dagster as dg

from llm_assets.artifacts import CommittedTable
from llm_assets.data import expectations
from llm_assets.data.assets import curated_corpus
from resources.lakehouse import LakehouseResource
from resources.spark import SparkResource


class CorpusExpectationsConfig(dg.Config):
    """Used by: curated_corpus_expectations."""

    min_chars: int = expectations.MIN_CHARS
    max_chars: int = expectations.MAX_CHARS


def _table(report: expectations.SuiteReport) -> str:
    lines = ["| expectation | passed | unexpected / observed |", "|---|---|---|"]
    for r in report.results:
        seen = r.get("unexpected_count", r.get("observed_value", r.get("exception", "")))
        lines.append(f"| `{r['expectation']}` | {'yes' if r['success'] else '**no**'} | {seen} |")
    return "\n".join(lines)


@dg.asset_check(asset=curated_corpus, blocking=True)
def curated_corpus_expectations(config: CorpusExpectationsConfig, curated_corpus: CommittedTable,
                                spark: SparkResource, lakehouse: LakehouseResource) -> dg.AssetCheckResult:
    """Great Expectations: columns exist, doc_id non-null and unique, text non-null, n_chars in bounds, no e-mail."""
    df = lakehouse.read(spark.session(), curated_corpus.table)
    report = expectations.validate_corpus(df, config.min_chars, config.max_chars)
    return dg.AssetCheckResult(passed=report.passed, metadata={
        "rows": report.rows,
        "expectations": len(report.results),
        "failed": dg.MetadataValue.json(report.failed),
        "results": dg.MetadataValue.md(_table(report)),
        "details": dg.MetadataValue.json(report.results),
        "min_chars": config.min_chars,
        "max_chars": config.max_chars,
        "delta_version": curated_corpus.table.version,
        "data_commit": curated_corpus.commit_id,
    })
