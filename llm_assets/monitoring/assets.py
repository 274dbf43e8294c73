"""Monitoring stage: the live endpoint measured from the gateway's request and feedback logs.

endpoint_metrics ingests new log rows (Delta `served_requests`, `served_feedback`) and measures them;
cost, quality, drift, the feedback dataset and the report read those tables; infra_health probes the
components. Every judgement is a plain function in this package; the assets only wire them up.
"""

# No `from __future__ import annotations`: Dagster 1.13 reads the config and resource
# parameters' annotations as objects, and string annotations break its config inference.

import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pandas as pd

from llm_assets.data.bias import image_markdown
from llm_assets.evaluation import review
from llm_assets.monitoring import cost, drift, feedback_data, health, load, performance, quality, report, tables
from llm_assets.monitoring.requestlog import FEEDBACK_FIELDS, REQUEST_FIELDS, read_new
from resources.lakehouse import LakehouseResource
from resources.serving import ServingResource
from resources.settings import SettingsResource
from resources.spark import SparkResource
from resources.tracking import TrackingResource
from resources.versioning import VersioningResource

# Not "endpoint_metrics": homes made before the request log hold probe rows under that name.
METRICS_TABLE, COST_TABLE, SCORES_TABLE = "endpoint_metric_windows", "endpoint_cost", "quality_scores"
QUALITY_HISTORY, DRIFT_HISTORY, HEALTH_TABLE, FEEDBACK_DATASET = (
    "quality_history", "drift_history", "component_health", "feedback_dataset")


class EndpointMetricsConfig(dg.Config):
    """Used by: endpoint_metrics."""

    request_log: str = ""
    """Empty: <serving run_dir>/logs/requests.jsonl (the gateway's --request-log)."""
    feedback_log: str = ""
    """Empty: <serving run_dir>/logs/feedback.jsonl."""
    gateway_url: str = ""
    """Empty: the recorded deployment's URL, else 127.0.0.1 on the serving resource's gateway port."""
    max_silence_s: float = 3600.0
    """No request-log rows for longer than this, with the gateway up, fails the arrival check (WARN)."""
    probe_requests_when_idle: int = 0
    """> 0: when the log has no new rows, send this many probe requests (load.py) and read the log again."""
    probe_max_tokens: int = 16
    probe_concurrency: int = 4


def _latest_metadata(context, key: str) -> dict:
    event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
    if event is None or event.asset_materialization is None:
        return {}
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def _gateway_url(config: EndpointMetricsConfig, serving: ServingResource) -> str:
    if config.gateway_url:
        return config.gateway_url
    current = serving.current()
    return current.url if current else f"http://127.0.0.1:{serving.gateway_port}"


def _cursor(previous: dict, key: str) -> dict | None:
    return json.loads(previous[key]) if key in previous else None


def _numbers(d: dict, keys) -> dict:
    return {k: dg.MetadataValue.float(float(d[k])) for k in keys if k in d}


def _gpu_numbers(replicas: list[dict]) -> dict[str, float]:
    """GPU memory held by `replicas` and the mean utilization of their GPUs; NaN where none reports a GPU."""
    util = [r["gpu_util_percent"] for r in replicas if r["gpu_util_percent"] == r["gpu_util_percent"]]
    memory = [r["gpu_memory_mb"] for r in replicas if r["gpu_memory_mb"] == r["gpu_memory_mb"]]
    return {"gpu_util_percent": float(sum(util) / len(util)) if util else float("nan"),
            "gpu_memory_mb": float(sum(memory)) if memory else float("nan")}


_WINDOW_NUMBERS = ("latency_p50_ms", "latency_p95_ms", "latency_p99_ms", "ttft_p50_ms", "ttft_p95_ms",
                   "tokens_per_s", "decode_tokens_per_s_p50", "error_rate", "request_rate_per_s")


@dg.asset(group_name="monitoring", kinds={"spark", "delta", "prometheus"}, deps=["endpoint"],
          check_specs=[dg.AssetCheckSpec("metrics_arriving", asset="endpoint_metrics",
                                         description="New request-log rows arrive, or the gateway at least "
                                                     "answers; a dead gateway with a silent log fails.")])
def endpoint_metrics(context: dg.AssetExecutionContext, config: EndpointMetricsConfig, serving: ServingResource,
                     spark: SparkResource, lakehouse: LakehouseResource) -> dg.MaterializeResult:
    """Request rate, latency p50/p95/p99, TTFT, tokens/s, errors, queue depth and replica CPU/memory (GPU
    utilization and memory via NVML where there is a GPU) per model and prompt version, from the gateway's
    request log since the last run; rows in Delta."""
    run_dir = Path(serving.run_dir)
    request_log = config.request_log or str(run_dir / "logs" / "requests.jsonl")
    feedback_log = config.feedback_log or str(run_dir / "logs" / "feedback.jsonl")
    url = _gateway_url(config, serving)
    previous = _latest_metadata(context, "endpoint_metrics")
    got = read_new(request_log, _cursor(previous, "request_log_cursor"), REQUEST_FIELDS)
    if not got.rows and config.probe_requests_when_idle > 0:
        current = serving.current()
        records, _ = load.run_load(url, current.model_name if current else "", config.probe_requests_when_idle,
                                   config.probe_concurrency, config.probe_max_tokens, serving.api_key)
        context.log.info(f"no traffic: sent {len(records)} probe requests to {url}")
        got = read_new(request_log, _cursor(previous, "request_log_cursor"), REQUEST_FIELDS)
    fb = read_new(feedback_log, _cursor(previous, "feedback_log_cursor"), FEEDBACK_FIELDS)

    session, batch_id = spark.session(), uuid.uuid4().hex[:12]
    _, fresh = tables.append(session, lakehouse, tables.REQUESTS, got.rows, batch_id,
                             f"{len(got.rows)} logged requests from {request_log}")
    _, fresh_feedback = tables.append(session, lakehouse, tables.FEEDBACK, fb.rows, batch_id,
                                    f"{len(fb.rows)} feedback records from {feedback_log}")
    rejected = [{"source": src, **r} for src, read in (("requests", got), ("feedback", fb)) for r in read.rejected]
    if rejected:
        tables.append(session, lakehouse, tables.QUARANTINE, rejected, batch_id, f"{len(rejected)} bad log lines")
        context.log.warning(f"quarantined {len(rejected)} bad log lines, e.g. {rejected[0]['reason']}")

    scrape, scrape_error = performance.scrape_gateway(url, serving.headers())
    replicas = performance.replica_resources(run_dir)
    gpu_status = ("; ".join(sorted({r["gpu"] for r in replicas})) if replicas
                  else performance.gpu_snapshot()["status"])
    new_requests, new_feedback = len(fresh), len(fresh_feedback)
    window = pd.DataFrame(fresh, columns=list(REQUEST_FIELDS) + ["context"])
    if not window.empty:
        window["timestamp"] = pd.to_datetime(window["timestamp"], utc=True)
    groups = performance.window_metrics(window)
    for g in groups:
        v = g["model_version"]
        g["queue_depth"] = (scrape["queue_depth_total"] if v == performance.ALL else scrape["queue_depth"].get(v, 0.0)
                            ) if scrape else float("nan")
        mine = [r for r in replicas if v == performance.ALL or r["model_version"] == v]
        g["replica_cpu_percent"] = float(sum(r["cpu_percent"] for r in mine if r["running"]))
        g["replica_rss_mb"] = float(sum(r["rss_mb"] for r in mine if r["running"]))
        g.update(_gpu_numbers([r for r in mine if r["running"]]))
        g["batch_id"] = batch_id
    if groups:
        tables.append_frame(session, lakehouse, METRICS_TABLE, pd.DataFrame(groups),
                            f"metrics of {new_requests} requests", batch_id=batch_id)

    stored = tables.read(lakehouse.root, tables.REQUESTS, ["timestamp"])
    last_age = ((datetime.now(timezone.utc) - stored["timestamp"].max()).total_seconds()
                if not stored.empty else None)
    passed, severity, why = performance.arrival_verdict(new_requests, scrape_error, last_age, config.max_silence_s)
    (context.log.info if passed else context.log.error)(f"metrics arriving: {why}")
    for g in groups[:-1]:  # per model/prompt version, so the UI plots each over time
        context.log_event(dg.AssetObservation(
            asset_key="endpoint_metrics", description=f"{g['model']} v{g['model_version']} prompt {g['prompt_version']}",
            metadata={"model": g["model"], "model_version": g["model_version"], "prompt_version": g["prompt_version"],
                      "requests": g["requests"],
                      **_numbers(g, _WINDOW_NUMBERS + ("queue_depth", "gpu_util_percent", "gpu_memory_mb"))}))
    overall = groups[-1] if groups else {}
    top_version = (window["model_version"].value_counts().idxmax() if not window.empty else "")
    feedback_total = len(tables.read(lakehouse.root, tables.FEEDBACK, ["request_id"]))
    table_md = "\n".join(["| model | version | prompt | requests | p50 ms | p95 ms | p99 ms | TTFT p50 | tok/s | errors |",
                          "|---|---|---|---|---|---|---|---|---|---|"] + [
        f"| {g['model']} | {g['model_version']} | {g['prompt_version'] or '-'} | {g['requests']} | "
        f"{g['latency_p50_ms']:.0f} | {g['latency_p95_ms']:.0f} | {g['latency_p99_ms']:.0f} | {g['ttft_p50_ms']:.0f} | "
        f"{g['tokens_per_s']:.1f} | {g['error_rate']:.1%} |" for g in groups])
    nan = float("nan")
    return dg.MaterializeResult(
        metadata={
            **{k: dg.MetadataValue.float(float(overall.get(k, nan))) for k in _WINDOW_NUMBERS},
            "requests": dg.MetadataValue.int(new_requests),
            "model_version": str(top_version),
            "model_versions": sorted(window["model_version"].unique().tolist()) if not window.empty else [],
            "queue_depth": dg.MetadataValue.float(float(overall.get("queue_depth", scrape["queue_depth_total"]
                                                                    if scrape else nan))),
            "gateway_up": scrape is not None,
            "gateway_error": scrape_error or "-",
            "replicas_up": dg.MetadataValue.int(scrape["replicas_up"] if scrape else 0),
            "replicas_down": dg.MetadataValue.int(scrape["replicas_down"] if scrape else 0),
            "replica_processes": dg.MetadataValue.md("\n".join(
                ["| process | pid | version | running | CPU % | RSS MB | GPU % | GPU MB | GPU |",
                 "|---|---|---|---|---|---|---|---|---|"] +
                [f"| {r['name']} | {r.get('pid', '-')} | {r['model_version'] or '-'} | {r['running']} | "
                 f"{r['cpu_percent']:.1f} | {r['rss_mb']:.0f} | {r['gpu_util_percent']:.0f} | "
                 f"{r['gpu_memory_mb']:.0f} | {r['gpu']} |" for r in replicas])),
            "gpu": gpu_status,
            **{k: dg.MetadataValue.float(v) for k, v in _gpu_numbers([r for r in replicas if r["running"]]).items()},
            "by_version": dg.MetadataValue.md(table_md),
            "feedback_new": dg.MetadataValue.int(new_feedback),
            "feedback_total": dg.MetadataValue.int(feedback_total),
            "requests_total": dg.MetadataValue.int(len(stored)),
            "quarantined_lines": dg.MetadataValue.int(len(rejected)),
            "request_log_cursor": json.dumps(got.cursor),
            "feedback_log_cursor": json.dumps(fb.cursor),
            "request_log": dg.MetadataValue.path(request_log),
            "gateway_url": dg.MetadataValue.url(url),
        },
        check_results=[dg.AssetCheckResult(
            check_name="metrics_arriving", passed=passed,
            severity=dg.AssetCheckSeverity.WARN if severity == "WARN" else dg.AssetCheckSeverity.ERROR,
            metadata={"why": why, "new_rows": new_requests, "gateway_up": scrape is not None,
                      "last_row_age_s": dg.MetadataValue.float(float(last_age if last_age is not None else nan)),
                      "max_silence_s": dg.MetadataValue.float(config.max_silence_s)})],
    )


class CostConfig(dg.Config):
    """Used by: endpoint_cost. The price table (USD) and the daily budget."""

    cpu_hour_usd: float = 0.034
    replica_cpus: float = 2.0
    gpu_instance_hour_usd: float = 2.50
    gpu_versions: list[str] = []
    """Model versions served on GPU instances (billed per GPU instance-hour)."""
    min_billed_minutes: float = 1.0
    daily_budget_usd: float = 5.0


@dg.asset(group_name="monitoring", kinds={"spark", "delta"}, deps=["endpoint_metrics"],
          check_specs=[dg.AssetCheckSpec("within_daily_budget", asset="endpoint_cost",
                                         description="The latest day's serving cost is within the budget.")])
def endpoint_cost(context: dg.AssetExecutionContext, config: CostConfig, spark: SparkResource,
                  lakehouse: LakehouseResource) -> dg.MaterializeResult:
    """Serving cost per model version: per hour, per 1k tokens, and daily totals from the price table."""
    prices = cost.PriceTable(config.cpu_hour_usd, config.replica_cpus, config.gpu_instance_hour_usd,
                             tuple(config.gpu_versions), config.min_billed_minutes)
    costs = cost.daily_costs(tables.read(lakehouse.root, tables.REQUESTS), prices)
    version = None
    if not costs.empty:
        version = lakehouse.write(spark.session().createDataFrame(costs).coalesce(1), COST_TABLE,
                                  f"daily cost of {len(costs)} (day, model version) pairs")
    ok, day, total, why = cost.budget_verdict(costs, config.daily_budget_usd)
    (context.log.info if ok else context.log.error)(why)
    today = costs[costs["day"] == day] if not costs.empty else costs
    return dg.MaterializeResult(
        metadata={
            "day": day or "-",
            "daily_total_usd": dg.MetadataValue.float(total),
            "daily_budget_usd": dg.MetadataValue.float(config.daily_budget_usd),
            **{f"cost_per_1k_tokens_usd/v{r.model_version}": dg.MetadataValue.float(float(r.cost_per_1k_tokens_usd))
               for r in today.itertuples()},
            **{f"cost_per_hour_usd/v{r.model_version}": dg.MetadataValue.float(float(r.hourly_usd * r.replicas))
               for r in today.itertuples()},
            "costs": dg.MetadataValue.md(costs.to_markdown(index=False) if not costs.empty else "no requests"),
            "delta_version": dg.MetadataValue.int(version.version if version else -1),
        },
        check_results=[dg.AssetCheckResult(check_name="within_daily_budget", passed=ok, metadata={
            "day": day or "-", "total_usd": dg.MetadataValue.float(total),
            "budget_usd": dg.MetadataValue.float(config.daily_budget_usd), "why": why})],
    )


class QualityConfig(dg.Config):
    """Used by: output_quality."""

    sample_fraction: float = 0.2
    seed: int = 0
    toxicity_threshold: float = 0.5
    feedback_window_hours: float = 24.0
    """Feedback received in this window counts toward the feedback rates."""
    max_toxicity_rate: float = 0.05
    max_pii_leak_rate: float = 0.02
    max_refusal_rate: float = 0.3
    max_hallucination_rate: float = 0.5
    max_negative_feedback_rate: float = 0.5
    review_queue: bool = True
    """Put sampled items in the human-review queue (llm_assets/evaluation/review.py)."""

    def limits(self) -> dict[str, float]:
        return {"toxicity_rate": self.max_toxicity_rate, "pii_leak_rate": self.max_pii_leak_rate,
                "refusal_rate": self.max_refusal_rate, "hallucination_rate": self.max_hallucination_rate,
                "negative_feedback_rate": self.max_negative_feedback_rate}


_QUALITY_NUMBERS = ("toxicity_rate", "hallucination_rate", "refusal_rate", "pii_leak_rate", "response_chars_mean",
                    "thumbs_up_rate", "mean_rating", "negative_feedback_rate")


@dg.asset(group_name="monitoring", kinds={"delta"}, deps=["endpoint_metrics"],
          check_specs=[dg.AssetCheckSpec("quality_within_limits", asset="output_quality",
                                         description="Toxicity, PII leaks, refusals, hallucination and negative "
                                                     "feedback of sampled live requests stay under their limits.")])
def output_quality(context: dg.AssetExecutionContext, config: QualityConfig, spark: SparkResource,
                   lakehouse: LakehouseResource) -> dg.MaterializeResult:
    """A sample of new logged requests scored for toxicity, hallucination, refusals, length and PII leaks, joined
    with user feedback; sampled items go to the human-review queue."""
    requests = tables.read(lakehouse.root, tables.REQUESTS)
    scored_ids = set(tables.read(lakehouse.root, SCORES_TABLE, ["request_id"])["request_id"])
    fresh = requests[~requests["request_id"].isin(scored_ids)] if not requests.empty else requests
    picked = quality.sample(fresh, config.sample_fraction, config.seed)
    feedback = tables.read(lakehouse.root, tables.FEEDBACK)
    if not feedback.empty:
        since = datetime.now(timezone.utc) - timedelta(hours=config.feedback_window_hours)
        feedback = feedback[feedback["timestamp"] >= since]
    scored = quality.score(picked, config.toxicity_threshold) if not picked.empty else pd.DataFrame(
        columns=["request_id", "toxic", "hallucination", "refusal", "pii_found", "response_chars"])
    session = spark.session()
    if not scored.empty:
        joined = quality.join_feedback(scored, feedback)
        tables.append_frame(session, lakehouse, SCORES_TABLE, joined.astype({"rating": float}),
                            f"{len(scored)} sampled requests scored")
    summary = quality.summarize(scored, feedback)
    ok, breaches = quality.quality_verdict(summary, config.limits())
    queued = 0
    if config.review_queue and not scored.empty:
        for (model, version), samples in quality.review_samples(scored, picked).items():
            queued += review.enqueue(lakehouse.root, model, version, samples, lakehouse.storage_options())
    tables.append_frame(session, lakehouse, QUALITY_HISTORY, pd.DataFrame([{
        "measured_at": datetime.now(timezone.utc), **{k: float(summary[k]) for k in _QUALITY_NUMBERS},
        "sampled": summary["sampled"], "breaches": "; ".join(breaches)}]), "quality summary")
    context.log.info(f"scored {len(scored)} of {len(fresh)} new requests; {'; '.join(breaches) or 'within limits'}")
    return dg.MaterializeResult(
        metadata={**{k: dg.MetadataValue.float(float(summary[k])) for k in _QUALITY_NUMBERS},
                  "sampled": dg.MetadataValue.int(summary["sampled"]),
                  "new_requests": dg.MetadataValue.int(len(fresh)),
                  "with_context": dg.MetadataValue.int(summary["with_context"]),
                  "feedback": dg.MetadataValue.int(summary["feedback"]),
                  "queued_for_review": dg.MetadataValue.int(queued),
                  "degraded": not ok, "breaches": "; ".join(breaches) or "-"},
        check_results=[dg.AssetCheckResult(check_name="quality_within_limits", passed=ok, metadata={
            "breaches": "; ".join(breaches) or "-", "limits": dg.MetadataValue.json(config.limits())})],
    )


class DriftConfig(dg.Config):
    """Used by: drift_report."""

    window: int = 200
    """Requests in the reference and in the current window."""
    min_rows: int = 20
    """Fewer answered requests in either window: no drift is computed (reported as insufficient)."""
    reference_version: str = ""
    """Empty: the promoted version (most route weight), else the most-logged one."""
    auc_threshold: float = 0.75
    stats_share_threshold: float = 0.5


@dg.asset(group_name="monitoring", kinds={"evidently", "delta"}, deps=["endpoint_metrics"])
def drift_report(context: dg.AssetExecutionContext, config: DriftConfig, settings: SettingsResource,
                 serving: ServingResource, spark: SparkResource,
                 lakehouse: LakehouseResource) -> dg.MaterializeResult:
    """Input and output drift of the latest requests against the reference version's earliest window: MiniLM
    embeddings and text statistics (Evidently), with the HTML report."""
    requests = tables.read(lakehouse.root, tables.REQUESTS)
    routes_path = Path(serving.run_dir) / "routes.json"
    routes = json.loads(routes_path.read_text()) if routes_path.exists() else None
    ref_version = drift.reference_version(routes, requests, config.reference_version)
    reference, current = drift.windows(requests, ref_version, config.window) if ref_version else (requests, requests)
    meta = {"reference_version": ref_version or "-", "reference_rows": dg.MetadataValue.int(len(reference)),
            "current_rows": dg.MetadataValue.int(len(current))}
    if ref_version is None or min(len(reference), len(current)) < config.min_rows:
        why = f"insufficient data: {len(reference)} reference and {len(current)} current rows (min {config.min_rows})"
        context.log.info(why)
        return dg.MaterializeResult(metadata={**meta, "drifted": False, "status": why, "drift_reasons": "-"})
    from llm_assets.evaluation.rag import embed

    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = settings.path("reports", "monitoring", f"drift-{stamp}-{uuid.uuid4().hex[:6]}.html")
    result = drift.compare(reference, current, embed, path, auc_threshold=config.auc_threshold,
                           stats_share_threshold=config.stats_share_threshold)
    numbers = {k: float(v) for k, v in result.numbers.items()}
    tables.append_frame(spark.session(), lakehouse, DRIFT_HISTORY, pd.DataFrame([{
        "measured_at": datetime.now(timezone.utc), "reference_version": ref_version, "drifted": result.drifted,
        **{k: v for k, v in numbers.items() if not k.endswith("_p")}}]), "drift measurement")
    context.log.info(f"drift vs v{ref_version}: {'; '.join(result.reasons) or 'none'}")
    return dg.MaterializeResult(metadata={
        **meta, **{k: dg.MetadataValue.float(v) for k, v in numbers.items() if not k.endswith("_p")},
        "drifted": result.drifted, "status": "measured", "drift_reasons": "; ".join(result.reasons) or "-",
        "report": dg.MetadataValue.path(result.report_path),
        "thresholds": dg.MetadataValue.json({"auc": config.auc_threshold,
                                             "stats_share": config.stats_share_threshold}),
    })


class HealthConfig(dg.Config):
    """Used by: infra_health."""

    gateway_url: str = ""
    """Empty: the recorded deployment's URL, else 127.0.0.1 on the serving resource's gateway port."""
    probe_vector_query: bool = True
    """Time one embedded query against the vector DB (loads the MiniLM embedder)."""
    probe_recall: bool = True
    """Measure recall@k and MRR on the fixed probe set (<home>/monitoring/vector_db_probes.json)."""
    probe_set_size: int = 50
    """Probes drawn when the probe set is made (the first time, or on `rebuild_probe_set`)."""
    rebuild_probe_set: bool = False
    """Draw the probe set anew from the current index; otherwise the stored one is reused unchanged."""
    recall_k: int = 5
    min_recall: float = 0.0
    """recall@k on the probe set below this marks the vector DB unhealthy (the re-index sensor acts on it)."""
    max_recall_drop: float = 0.2
    """So does recall@k more than this below its baseline: what the probe set scored when first measured."""
    timeout_s: float = 3.0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


_HEALTH_KINDS = ("gateway", "replica", "vector_db", "mlflow", "lakehouse")


@dg.asset(group_name="monitoring", kinds={"delta"}, deps=["endpoint", "rag_index"],
          check_specs=[dg.AssetCheckSpec(f"{k}_healthy", asset="infra_health") for k in _HEALTH_KINDS])
def infra_health(context: dg.AssetExecutionContext, config: HealthConfig, settings: SettingsResource,
                 serving: ServingResource, tracking: TrackingResource, versioning: VersioningResource,
                 spark: SparkResource, lakehouse: LakehouseResource) -> dg.MaterializeResult:
    """Health of the gateway, each replica and serving process, the vector DB (freshness, rows, query latency,
    recall on a fixed probe set), MLflow and the lakehouse; one row per component in Delta."""
    from llm_assets.evaluation import rag

    current = serving.current()
    url = config.gateway_url or (current.url if current else f"http://127.0.0.1:{serving.gateway_port}")
    probe_path = settings.dir("monitoring") / "vector_db_probes.json"

    def recall(table) -> dict:
        return health.fixed_probe_recall(probe_path, table, config.probe_set_size, config.recall_k,
                                         rebuild=config.rebuild_probe_set)

    rows = [health.http_health("gateway", "gateway", url, config.timeout_s),
            *health.replica_health(Path(serving.run_dir) / "routes.json", config.timeout_s),
            *health.process_health(serving.run_dir),
            health.vector_db_health(settings.dir("vector"), rag.TABLE, versioning.head(),
                                    (lambda t: rag.probe_latency(t, "health probe")) if config.probe_vector_query
                                    else None, recall if config.probe_recall else None, config.min_recall,
                                    config.max_recall_drop),
            health.mlflow_health(tracking.tracking_uri, config.timeout_s),
            health.lakehouse_health(lakehouse.root, [tables.REQUESTS, tables.FEEDBACK, METRICS_TABLE])]
    frame = pd.DataFrame(rows).assign(checked_at=datetime.now(timezone.utc))
    tables.append_frame(spark.session(), lakehouse, HEALTH_TABLE, frame, f"health of {len(rows)} components")
    results = []
    for kind in _HEALTH_KINDS:
        mine = [r for r in rows if r["kind"] == kind or (kind == "replica" and r["kind"] == "process")]
        bad = [r for r in mine if not r["healthy"]]
        if bad:
            context.log.error(f"{kind}: " + "; ".join(f"{r['component']}: {r['detail']}" for r in bad))
        results.append(dg.AssetCheckResult(
            check_name=f"{kind}_healthy", passed=bool(mine) and not bad,
            metadata={"components": len(mine), "unhealthy": "; ".join(f"{r['component']}: {r['detail']}" for r in bad)
                      or ("-" if mine else f"no {kind} found")}))
    vector_numbers = json.loads(next(r["numbers"] for r in rows if r["kind"] == "vector_db"))
    md = "\n".join(["| component | healthy | latency ms | detail |", "|---|---|---|---|"] + [
        f"| {r['component']} | {'yes' if r['healthy'] else '**NO**'} | "
        f"{_ms(r['latency_ms'])} | {r['detail']} |" for r in rows])
    return dg.MaterializeResult(
        metadata={"components": dg.MetadataValue.int(len(rows)),
                  "unhealthy": dg.MetadataValue.int(sum(not r["healthy"] for r in rows)),
                  "unhealthy_components": [r["component"] for r in rows if not r["healthy"]],
                  "vector_db_healthy": all(r["healthy"] for r in rows if r["kind"] == "vector_db"),
                  "vector_db_detail": next(r["detail"] for r in rows if r["kind"] == "vector_db"),
                  "vector_db": dg.MetadataValue.json(vector_numbers),
                  **{f"vector_db_{k}": dg.MetadataValue.float(float(vector_numbers[k]))
                     for k in ("recall", "mrr", "baseline_recall") if k in vector_numbers},
                  **({"vector_db_probe_set": dg.MetadataValue.path(str(probe_path))} if probe_path.exists() else {}),
                  "health": dg.MetadataValue.md(md)},
        check_results=results,
    )


@dg.asset(group_name="monitoring", kinds={"spark", "delta"}, deps=["endpoint_metrics"])
def feedback_dataset(context: dg.AssetExecutionContext, spark: SparkResource,
                     lakehouse: LakehouseResource) -> dg.MaterializeResult:
    """Prompt/response pairs users rated good (thumbs up, or 4-5 stars), for fine-tuning; a new Delta version
    per build."""
    examples, counts = feedback_data.good_pairs(tables.read(lakehouse.root, tables.REQUESTS),
                                                tables.read(lakehouse.root, tables.FEEDBACK))
    if examples.empty:  # the lifecycle job builds it before anyone gave feedback: no new version then
        context.log.warning(f"no usable good feedback yet ({counts}); the dataset keeps its current version")
        latest = lakehouse.latest(FEEDBACK_DATASET)
        return dg.MaterializeResult(metadata={**{k: dg.MetadataValue.int(int(v)) for k, v in counts.items()},
                                              "delta_version": dg.MetadataValue.int(latest.version if latest else -1)})
    version = lakehouse.write(feedback_data.to_spark(spark.session(), examples), FEEDBACK_DATASET,
                              f"{len(examples)} good-feedback examples", mode="overwrite")
    context.log.info(f"{len(examples)} examples from {counts['feedback']} feedback records")
    return dg.MaterializeResult(metadata={
        **{k: dg.MetadataValue.int(int(v)) for k, v in counts.items()},
        "table": dg.MetadataValue.path(version.uri), "delta_version": dg.MetadataValue.int(version.version),
        "model_versions": sorted(examples["model_version"].unique().tolist()),
        "preview": dg.MetadataValue.md(examples.head(5)[["prompt", "response", "rating", "thumbs"]].to_markdown(
            index=False)),
    })


@dg.asset(group_name="monitoring", kinds={"matplotlib"},
          deps=["endpoint_metrics", "endpoint_cost", "output_quality", "drift_report"])
def monitoring_report(context: dg.AssetExecutionContext, settings: SettingsResource,
                      lakehouse: LakehouseResource) -> dg.MaterializeResult:
    """PNG plots of latency, tokens/s, cost, quality and drift over time, for people without Grafana, and the
    prompt A/B results: requests, errors, latency, tokens/s, positive feedback and toxicity per prompt version."""
    out_dir = settings.dir("reports", "monitoring", time.strftime("report-%Y%m%dT%H%M%S"))
    ab = report.prompt_ab(tables.read(lakehouse.root, tables.REQUESTS), tables.read(lakehouse.root, tables.FEEDBACK),
                          tables.read(lakehouse.root, SCORES_TABLE, ["request_id", "toxic"]))
    plots = report.build(tables.read(lakehouse.root, METRICS_TABLE), tables.read(lakehouse.root, COST_TABLE),
                         tables.read(lakehouse.root, QUALITY_HISTORY), tables.read(lakehouse.root, DRIFT_HISTORY),
                         out_dir, ab)
    context.log.info(f"{len(plots)} plots in {out_dir}; {len(ab)} prompt versions compared")
    return dg.MaterializeResult(metadata={
        "plots": dg.MetadataValue.int(len(plots)), "dir": dg.MetadataValue.path(str(out_dir)),
        **{name: dg.MetadataValue.md(image_markdown(path, name)) for name, path in plots.items()},
        "prompt_versions": dg.MetadataValue.int(len(ab)),
        "prompt_ab": dg.MetadataValue.md(report.ab_markdown(ab) if not ab.empty else "no requests"),
        "prompt_ab_numbers": dg.MetadataValue.json(json.loads(ab.to_json(orient="records")))})
