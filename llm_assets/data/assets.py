"""The data stage: raw text → cleaned → deduplicated → curated corpus, Spark into versioned Delta tables.

Every step appends what it rejects to the one `quarantine` table (rule and reason per row), records
its input table version in the Delta commit, and `curated_corpus` pins all of them in a data commit.
"""

import dataclasses
import json
import time

import dagster as dg
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from llm_assets.artifacts import CommittedTable
from llm_assets.data import accounting, bias, cleaning, composition, dedup, filters, ingest, pii, quality
from resources.lakehouse import LakehouseResource, TableVersion
from resources.settings import SettingsResource
from resources.spark import SparkResource
from resources.versioning import VersioningResource

QUARANTINE = "quarantine"
INGEST_LOG = "ingest_log"
MAIN_BRANCH = "main"
CURATED_CHECKS = ("curated_corpus_expectations", "curated_corpus_accounting")
"""The checks (checks.py) a data branch must pass before merged_data_commit merges it."""


class IngestConfig(dg.Config):
    """Used by: raw_documents."""

    max_files: int = ingest.MAX_FILES
    """Cap on files read from the default source (the venv's package docs), in path order."""
    max_bytes: int = ingest.MAX_BYTES
    """Larger files are quarantined as `oversized` without reading their content."""
    full_refresh: bool = False
    """Ignore `ingest_log`: read every file again and replace raw_documents with what is read."""


class CleaningConfig(dg.Config):
    """Used by: cleaned_corpus. Thresholds of the quality rules (llm_assets/data/cleaning.py)."""

    min_words: int = cleaning.QualityRules.min_words
    max_words: int = cleaning.QualityRules.max_words
    max_symbol_ratio: float = cleaning.QualityRules.max_symbol_ratio
    min_alpha_word_ratio: float = cleaning.QualityRules.min_alpha_word_ratio
    max_mean_word_length: float = cleaning.QualityRules.max_mean_word_length
    max_repeated_line_ratio: float = cleaning.QualityRules.max_repeated_line_ratio
    languages: list[str] = ["en"]
    """ISO 639-1 codes to keep (add `unknown` to keep unidentified text); empty keeps every language."""
    quality_filters: str = "software_docs"
    """Gopher/C4/FineWeb thresholds (llm_assets/data/filters.py): `paper` (the papers' values, for web
    text), `software_docs` (loosened for markdown, rst and licenses; C4 and FineWeb off) or `none`."""


class CurationConfig(dg.Config):
    """Used by: curated_corpus."""

    max_pii_per_1k_chars: float = 20.0
    """Documents denser in PII than this (after scrubbing) are quarantined as `pii_density`."""


class CorpusReportConfig(dg.Config):
    """Used by: corpus_report."""

    lexicon: dict[str, list[str]] = bias.DEFAULT_LEXICON
    """Demographic groups and their terms, counted as whole words."""
    toxicity_sample: int = 500
    toxicity_threshold: float = 0.5
    quality_sample: int = 0
    """Documents whose quality scores are computed, chosen by a hash of doc_id; 0 scores every document."""


class MergeConfig(dg.Config):
    """Used by: merged_data_commit."""

    into_branch: str = "main"
    """The branch a data commit made on another branch (LLMOPS_DATA_BRANCH) is merged into."""


class DedupConfig(dg.Config):
    """Used by: deduped_corpus. MinHash LSH settings (llm_assets/data/dedup.py)."""

    ngram: int = dedup.MinHashParams.ngram
    bands: int = dedup.MinHashParams.bands
    rows: int = dedup.MinHashParams.rows
    threshold: float = dedup.MinHashParams.threshold
    seed: int = dedup.MinHashParams.seed
    max_iterations: int = 50
    """Rounds of label propagation allowed for the connected components."""
    boilerplate_min_documents: int = 0
    """Remove lines (normalized, 10+ chars) found in at least this many documents before dedup; 0: off."""


# ---------------------------------------------------------------- table bookkeeping

def _rules(rejected: DataFrame) -> dict[str, int]:
    return {r["rule"]: r["count"] for r in rejected.groupBy("rule").count().orderBy("rule").collect()}


def _write_step(context: dg.AssetExecutionContext, lakehouse: LakehouseResource, result: ingest.StepResult,
                table: str, message: str, source: TableVersion | None = None) -> tuple[TableVersion, dict[str, int]]:
    """Append the rejects to quarantine, then commit the kept rows; the input version goes in the commit."""
    start = time.monotonic()
    info = {"run_id": context.run_id, "asset": table}
    if source is not None:
        info["input"] = f"{source.name}@{source.version}"
    try:
        rejected = result.rejected.withColumn("run_id", F.lit(context.run_id)).withColumn("asset", F.lit(table))
        rules = _rules(rejected)
        if rules:
            lakehouse.write(rejected, QUARANTINE, f"{table}: {message}", mode="append", **info)
        if result.kept.isEmpty():
            raise ValueError(f"{table}: no documents left ({sum(rules.values())} quarantined: {rules}); "
                             f"see the `{QUARANTINE}` table under {lakehouse.root}")
        written = lakehouse.write(result.kept, table, message, **info)
    finally:
        result.release()
    context.log.info(f"{table}: {written.rows:,} rows at v{written.version}, {sum(rules.values()):,} quarantined "
                     f"{rules} in {time.monotonic() - start:.1f} s")
    return written, rules


def _metadata(table: TableVersion, rules: dict[str, int], **extra) -> dict:
    return {"rows": table.rows, "quarantined": sum(rules.values()),
            "quarantined_by_rule": dg.MetadataValue.json(rules), "delta_version": table.version,
            "uri": dg.MetadataValue.path(table.uri), **extra}


# ---------------------------------------------------------------- assets

@dg.asset(group_name="data", kinds={"spark", "delta"})
def raw_documents(context: dg.AssetExecutionContext, config: IngestConfig, settings: SettingsResource,
                  spark: SparkResource, lakehouse: LakehouseResource) -> dg.Output[TableVersion]:
    """Raw text documents from the configured source (default: the venv's own package docs); only files
    not in `ingest_log` (new, or changed since) are read."""
    session = spark.session()
    label = ingest.source_label(settings.source)
    incremental = (not config.full_refresh and lakehouse.latest(INGEST_LOG) is not None
                   and lakehouse.latest("raw_documents") is not None)
    seen = lakehouse.read(session, INGEST_LOG) if incremental else None
    previous = lakehouse.read(session, "raw_documents") if incremental else None
    result = ingest.read_source(session, settings.source, config.max_bytes, config.max_files, seen=seen)
    files = {"listed_files": result.listed_files, "new_files": result.new_files}
    context.log.info(f"raw_documents: {label}: {result.new_files} new or changed of {result.listed_files} files")
    if result.new_files == 0:
        result.release()
        table = lakehouse.latest("raw_documents")
        return dg.Output(table, metadata=_metadata(table, {}, source=label, **files))
    log = result.log.localCheckpoint()  # computed now: _write_step releases the cached rows it reads
    merged = dataclasses.replace(result, kept=ingest.merge_raw(previous, result))
    table, rules = _write_step(context, lakehouse, merged, "raw_documents", f"ingest {label}")
    # Logged last: a run that fails before this reads the same files again next time.
    logged = lakehouse.write(log, INGEST_LOG, f"ingest {label}", mode="append", run_id=context.run_id,
                             asset="raw_documents")
    n_bytes = lakehouse.read(session, table).agg(F.sum("n_bytes")).first()[0]
    return dg.Output(table, metadata=_metadata(table, rules, source=label, bytes=int(n_bytes or 0),
                                               ingest_log_version=logged.version, **files))


@dg.asset(group_name="data", kinds={"spark", "delta"})
def cleaned_corpus(context: dg.AssetExecutionContext, config: CleaningConfig, raw_documents: TableVersion,
                   spark: SparkResource, lakehouse: LakehouseResource) -> dg.Output[TableVersion]:
    """Documents with text repaired (ftfy), markup stripped, NFC, whitespace normalized; quality rules applied."""
    presets = {"paper": filters.FilterConfig(), "software_docs": filters.FilterConfig.software_docs(),
               "none": filters.FilterConfig(c4=False, gopher_quality=False, gopher_repetition=False, fineweb=False)}
    if config.quality_filters not in presets:
        raise ValueError(f"CleaningConfig.quality_filters must be one of {sorted(presets)}, "
                         f"got {config.quality_filters!r}")
    rules = cleaning.QualityRules(**config.model_dump(exclude={"languages", "quality_filters"}))
    cleaned = cleaning.clean_documents(lakehouse.read(spark.session(), raw_documents), rules,
                                       languages=tuple(config.languages))
    filtered = filters.apply_filters(cleaned.kept, presets[config.quality_filters])
    stats = filters.drop_stats(filtered.dropped)
    result = ingest.StepResult(filtered.kept, cleaned.rejected.unionByName(filtered.rejected),
                               (*cleaned._cached, *filtered._cached))
    table, rejected = _write_step(context, lakehouse, result, "cleaned_corpus",
                                  f"clean raw_documents@{raw_documents.version}", source=raw_documents)
    return dg.Output(table, metadata=_metadata(
        table, rejected, rows_in=raw_documents.rows, thresholds=dg.MetadataValue.json(config.model_dump()),
        quality_filters=dg.MetadataValue.md(filters.drop_stats_markdown(stats))))


@dg.asset(group_name="data", kinds={"spark", "delta"})
def deduped_corpus(context: dg.AssetExecutionContext, config: DedupConfig, cleaned_corpus: TableVersion,
                   spark: SparkResource, lakehouse: LakehouseResource) -> dg.Output[TableVersion]:
    """The cleaned corpus with exact and near-duplicates (MinHash LSH, connected components) removed."""
    params = dedup.MinHashParams(**config.model_dump(exclude={"max_iterations", "boilerplate_min_documents"}))
    docs = lakehouse.read(spark.session(), cleaned_corpus)
    boilerplate = {}
    if config.boilerplate_min_documents:
        stripped = dedup.remove_boilerplate_lines(docs, min_documents=config.boilerplate_min_documents)
        docs = stripped.docs
        boilerplate = {"boilerplate_lines_removed": stripped.lines_removed,
                       "boilerplate_chars_removed": stripped.chars_removed}
    result = dedup.deduplicate(docs, params, config.max_iterations)
    try:
        table, rejected = _write_step(context, lakehouse, result, "deduped_corpus",
                                      f"dedup cleaned_corpus@{cleaned_corpus.version}", source=cleaned_corpus)
    finally:
        if config.boilerplate_min_documents:
            stripped.release()
    context.log.info(f"deduped_corpus: {result.clusters} near-duplicate clusters "
                     f"({result.iterations} label propagation rounds)")
    return dg.Output(table, metadata=_metadata(
        table, rejected, rows_in=cleaned_corpus.rows, exact_removed=rejected.get("exact_duplicate", 0),
        near_removed=rejected.get("near_duplicate", 0), clusters=result.clusters,
        largest_cluster=max(result.cluster_sizes, default=1), **boilerplate,
        cluster_sizes=dg.MetadataValue.md(dedup.cluster_sizes_markdown(result.cluster_sizes)),
        minhash=dg.MetadataValue.json({**config.model_dump(), "num_perm": params.num_perm})))


@dg.asset(group_name="data", kinds={"spark", "delta"})
def curated_corpus(context: dg.AssetExecutionContext, config: CurationConfig, deduped_corpus: TableVersion,
                   spark: SparkResource, lakehouse: LakehouseResource,
                   versioning: VersioningResource) -> dg.Output[CommittedTable]:
    """The training corpus: PII scrubbed, PII-dense documents quarantined, committed as a data version."""
    session = spark.session()
    scrubbed = composition.curate_documents(lakehouse.read(session, deduped_corpus))
    kept, rejected = pii.split_by_pii_density(scrubbed, config.max_pii_per_1k_chars)
    table, rules = _write_step(context, lakehouse, ingest.StepResult(kept, rejected), "curated_corpus",
                               f"curate deduped_corpus@{deduped_corpus.version}", source=deduped_corpus)
    written = lakehouse.read(session, table)  # what was committed, not a recomputation
    totals, summary = pii.pii_totals(written), composition.summarize(written)
    tables = accounting.lineage(lakehouse, table)[::-1]
    if (quarantine := lakehouse.latest(QUARANTINE)) is not None:
        tables.append(quarantine)
    branches = versioning.list_branches()
    if versioning.branch not in branches and MAIN_BRANCH in branches:
        versioning.create_branch(versioning.branch, MAIN_BRANCH)  # a new data branch forks from main
    commit_id = versioning.commit(tables, f"curated corpus from {deduped_corpus.name}@{deduped_corpus.version}",
                                  {"run_id": context.run_id})
    context.log.info(f"curated_corpus: {table.rows:,} documents, PII replaced {totals}, data commit {commit_id} "
                     f"pins {[f'{t.name}@{t.version}' for t in tables]}")
    return dg.Output(CommittedTable(table=table, commit_id=commit_id), metadata={
        "rows": table.rows, "delta_version": table.version, "uri": dg.MetadataValue.path(table.uri),
        "data_commit": commit_id, "pinned": dg.MetadataValue.json({t.name: t.version for t in tables}),
        **{f"pii_{k}": v for k, v in totals.items()},
        "quarantined_pii_density": rules.get("pii_density", 0),
        "languages": dg.MetadataValue.json(summary["by_language"]),
        "composition": dg.MetadataValue.md(composition.composition_markdown(summary)),
        "chars": summary["chars"],
    })


@dg.asset(group_name="data", kinds={"spark", "matplotlib"})
def corpus_report(context: dg.AssetExecutionContext, config: CorpusReportConfig, curated_corpus: CommittedTable,
                  settings: SettingsResource, spark: SparkResource, lakehouse: LakehouseResource,
                  versioning: VersioningResource) -> dg.MaterializeResult:
    """Bias and composition of the committed corpus: terms, toxicity, quality scores, plots, change since the parent."""
    docs = lakehouse.read(spark.session(), curated_corpus.table).persist()
    try:
        summary = composition.summarize(docs)
        counts = bias.demographic_counts(docs, config.lexicon)
        toxic = bias.toxicity(docs, config.toxicity_sample, config.toxicity_threshold)
        lengths = docs.select("n_chars").toPandas()["n_chars"]
        scores, plotted = quality.summarize_quality(docs, config.quality_sample)
    finally:
        docs.unpersist()
    group_shares = bias.shares(counts)
    headline = {"documents": summary["documents"], "chars": summary["chars"], "toxicity_rate": toxic["rate"],
                "groups": list(counts), **{f"share_{g}": v for g, v in group_shares.items()},
                **quality.headline(scores)}
    reports = settings.dir("reports", "corpus")
    (reports / f"{curated_corpus.commit_id}.json").write_text(json.dumps(
        {**headline, "summary": summary, "demographic_counts": counts, "toxicity": toxic, "quality": scores},
        indent=1))
    parent = versioning.get_commit(curated_corpus.commit_id).get("parent")
    previous_path = reports / f"{parent}.json"
    previous = json.loads(previous_path.read_text()) if parent and previous_path.exists() else None
    plot = bias.composition_plot(summary, lengths, reports / f"{curated_corpus.commit_id}.png")
    quality_plot = bias.quality_plot(plotted, reports / f"{curated_corpus.commit_id}.quality.png")
    context.log.info(f"corpus_report: demographic terms {counts}, toxicity {toxic['toxic']}/{toxic['sampled']}"
                     f" sampled documents; compared with {'commit ' + parent if previous else 'nothing'}")
    terms = "| group | matches | share |\n|---|---:|---:|\n" + "".join(
        f"| {g} | {n:,} | {group_shares[g]:.1%} |\n" for g, n in counts.items())
    return dg.MaterializeResult(metadata={
        "data_commit": curated_corpus.commit_id,
        "documents": summary["documents"],
        "toxicity_rate": dg.MetadataValue.float(toxic["rate"]),
        "toxicity_ci95": dg.MetadataValue.json(toxic["ci95"]),
        "toxicity_sampled": toxic["sampled"],
        "demographic_terms": dg.MetadataValue.md(terms),
        **{f"share_{g}": dg.MetadataValue.float(v) for g, v in group_shares.items()},
        "composition": dg.MetadataValue.md(composition.composition_markdown(summary)),
        "plot": dg.MetadataValue.md(bias.image_markdown(plot, "composition")),
        "plot_path": dg.MetadataValue.path(str(plot)),
        "quality_scored": scores["documents"],
        "quality_scores": dg.MetadataValue.md(quality.quality_markdown(scores)),
        "quality_plot": dg.MetadataValue.md(bias.image_markdown(quality_plot, "quality scores")),
        "quality_plot_path": dg.MetadataValue.path(str(quality_plot)),
        "change_since_parent": dg.MetadataValue.md(bias.comparison_markdown(headline, previous)),
    })


@dg.asset(group_name="data", kinds={"delta"})
def merged_data_commit(context: dg.AssetExecutionContext, config: MergeConfig, curated_corpus: CommittedTable,
                       versioning: VersioningResource) -> dg.MaterializeResult:
    """The data branch merged into `into_branch`, only when every check on curated_corpus passed in this run."""
    source = versioning.branch
    if source == config.into_branch:
        return dg.MaterializeResult(metadata={"data_commit": curated_corpus.commit_id, "merged": False,
                                              "reason": f"committed on {source} directly"})
    outcomes = {}
    for name in CURATED_CHECKS:
        key = dg.AssetCheckKey(dg.AssetKey("curated_corpus"), name)
        record = context.instance.get_latest_asset_check_evaluation_record(key)
        ran_here = record is not None and record.run_id == context.run_id and record.evaluation is not None
        outcomes[name] = bool(ran_here and record.evaluation.passed)
    passed = bool(outcomes) and all(outcomes.values())
    head = versioning.merge(source, config.into_branch, checks_passed=passed,
                            message=f"merge {source} ({curated_corpus.commit_id}) into {config.into_branch}",
                            metadata={"run_id": context.run_id})
    context.log.info(f"merged data branch {source} into {config.into_branch}: head {head}; checks {outcomes}")
    return dg.MaterializeResult(metadata={"data_commit": curated_corpus.commit_id, "merged": True,
                                          "into_branch": config.into_branch, "head": head,
                                          "checks": dg.MetadataValue.json(outcomes)})


data_assets = [raw_documents, cleaned_corpus, deduped_corpus, curated_corpus, corpus_report, merged_data_commit]
