"""Sensors that close the loop from monitoring: retrain on drift or degraded quality, build a fine-tuning
dataset once enough feedback arrived and fine-tune the promoted model on it, re-index when the vector DB is
stale or down.

Each reads the latest materialization of a monitoring asset, keeps a JSON cursor (the events it has acted
on and when it last requested a run), never acts twice on one event (cursor and `run_key`), and waits a
cool-down after each request so a flapping metric cannot start a storm of runs. A sensor that raises keeps
its cursor (Dagster stores a cursor only from a successful evaluation), so no event is lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import dagster as dg

from jobs import feedback_dataset_job, reindex_job, retrain_job
from llm_assets.training.feedback import VERSION_TAG as FEEDBACK_VERSION_TAG


def load_cursor(cursor: str | None) -> dict:
    return json.loads(cursor) if cursor else {}


def metadata_values(record: dg.EventLogRecord) -> dict:
    """A materialization record's metadata as plain values."""
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def _latest(context: dg.SensorEvaluationContext, asset: str):
    records = context.instance.fetch_materializations(dg.AssetKey(asset), limit=1).records
    if not records:
        return None, {}
    return records[0].storage_id, metadata_values(records[0])


def _require(meta: dict, keys: tuple[str, ...], asset: str, storage_id: int) -> None:
    missing = [k for k in keys if k not in meta]
    if missing:
        raise ValueError(f"{asset} materialization (event {storage_id}) lacks metadata {missing}; "
                         f"it was not written by llm_assets.monitoring.assets")


def cooling_down(state: dict, cooldown_s: float, now: float, key: str = "last_request_at") -> float:
    """Seconds left of the cool-down after the last requested run (its time under `key`; 0 when none)."""
    return max(0.0, state.get(key, 0.0) + cooldown_s - now)


_DRIFT_NUMBERS = ("input_embedding_auc", "output_embedding_auc", "input_stats_drift_share", "output_stats_drift_share")
_QUALITY_NUMBERS = ("toxicity_rate", "pii_leak_rate", "refusal_rate", "hallucination_rate", "negative_feedback_rate")


def last_training_config(context: dg.SensorEvaluationContext, job_name: str) -> dict:
    """The run config of the run that trained the current model, cut to `job_name`'s assets: a retrain trains,
    evaluates and deploys the way the model it replaces was (empty when unknown)."""
    records = context.instance.fetch_materializations(dg.AssetKey("trained_checkpoint"), limit=1).records
    repository = context.repository_def
    if not records or repository is None:
        return {}
    run = context.instance.get_run_by_id(records[0].run_id)
    ops = (run.run_config or {}).get("ops", {}) if run else {}
    nodes = set(repository.get_job(job_name).graph.node_dict)
    return {"ops": {k: v for k, v in ops.items() if k in nodes}} if ops else {}


_SERVED_VERSION = (("endpoint", "stable_version"), ("canary_analysis", "stable_version"),
                   ("endpoint_rollback", "promoted_version"))


def promoted_export(context: dg.SensorEvaluationContext, search: int = 100) -> tuple[dict | None, str]:
    """(metadata of the exported_model materialization of the version the gateway serves as stable, or None;
    which one and why). The stable version is the newest of endpoint's and canary_analysis's `stable_version`
    and endpoint_rollback's `promoted_version`; with none of them, the newest exported_model."""
    served = []
    for asset, key in _SERVED_VERSION:
        sid, meta = _latest(context, asset)
        if sid is not None and meta.get(key) not in (None, "", "none"):
            served.append((sid, meta[key]))
    records = context.instance.fetch_materializations(dg.AssetKey("exported_model"), limit=search).records
    exports = [metadata_values(r) for r in records]
    if not exports:
        return None, "no exported_model materialization to fine-tune"
    if not served:
        return exports[0], f"the newest exported_model v{exports[0].get('version')} (nothing deployed yet)"
    stable = str(max(served)[1])
    match = next((m for m in exports if str(m.get("version")) == stable and "model_dir" in m), None)
    if match is None:
        return None, f"the promoted version {stable} is not among the last {len(exports)} exported_model materializations"
    return match, f"the promoted model v{stable}"


def fine_tune_config(config: dict, model_dir: str) -> dict:
    """`config` (a retrain run config) with trained_checkpoint continuing from `model_dir` on the feedback examples."""
    ops = {**config.get("ops", {})}
    step = ops.get("trained_checkpoint", {})
    ops["trained_checkpoint"] = {**step, "config": {**step.get("config", {}), "init_from": model_dir,
                                                    "feedback_examples": True}}
    return {**config, "ops": ops}


def make_retrain_sensor(cooldown_s: float = 3600.0, minimum_interval_seconds: int = 30,
                        clock: Callable[[], float] = time.time) -> dg.SensorDefinition:
    @dg.sensor(name="monitoring_retrain_sensor", job=retrain_job, minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.STOPPED)
    def monitoring_retrain_sensor(context: dg.SensorEvaluationContext):
        """Retrains when a new drift_report shows drift or a new output_quality breaches its limits."""
        state = load_cursor(context.cursor)
        found = []
        for asset, flag, reason_key, numbers in (("drift_report", "drifted", "drift_reasons", _DRIFT_NUMBERS),
                                                 ("output_quality", "degraded", "breaches", _QUALITY_NUMBERS)):
            storage_id, meta = _latest(context, asset)
            if storage_id is None or storage_id <= state.get(asset, 0):
                continue
            _require(meta, (flag, reason_key), asset, storage_id)
            found.append((asset, storage_id, meta, flag, reason_key, numbers))
        if not found:
            return dg.SkipReason("no new drift_report or output_quality measurement")
        triggers = [f for f in found if f[2][f[3]]]
        if not triggers:  # healthy measurements are consumed
            return dg.SensorResult(skip_reason="new measurements within thresholds",
                                   cursor=json.dumps({**state, **{f[0]: f[1] for f in found}}))
        wait = cooling_down(state, cooldown_s, clock())
        if wait > 0:  # leave the events unconsumed: the newest one acts after the cool-down
            return dg.SkipReason(f"{', '.join(t[0] for t in triggers)} over threshold; cooling down {wait:.0f}s more")
        reason = "; ".join(f"{asset}: {meta[reason_key]}" for asset, _, meta, _, reason_key, _ in triggers)
        tags = {"llmops/sensor": "monitoring_retrain_sensor", "llmops/reason": reason[:1000],
                "llmops/trigger_events": ",".join(f"{t[0]}:{t[1]}" for t in triggers)}
        for asset, _, meta, _, _, numbers in triggers:
            tags.update({f"llmops/{k}": f"{float(meta[k]):.4f}" for k in numbers if k in meta})
        run_key = "retrain-" + "-".join(f"{t[0]}{t[1]}" for t in triggers)
        config = last_training_config(context, retrain_job.name)
        if config.get("ops", {}).get("trained_checkpoint", {}).get("config", {}).get("init_from"):
            # the last run fine-tuned the model served then: continue from the one served now
            export, which = promoted_export(context)
            if export is not None:
                config = fine_tune_config(config, str(export["model_dir"]))
                tags["llmops/fine_tune_from"] = which
        return dg.SensorResult(run_requests=[dg.RunRequest(run_key=run_key, tags=tags, run_config=config)],
                               cursor=json.dumps({**state, **{f[0]: f[1] for f in found},
                                                  "last_request_at": clock()}))

    return monitoring_retrain_sensor


IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


def make_feedback_sensor(min_new_feedback: int = 50, cooldown_s: float = 3600.0, minimum_interval_seconds: int = 60,
                         clock: Callable[[], float] = time.time) -> dg.SensorDefinition:
    def _build_step(context, state: dict) -> tuple[dg.RunRequest | None, dict, str]:
        """(a) enough new feedback → build_feedback_dataset."""
        storage_id, meta = _latest(context, "endpoint_metrics")
        if storage_id is None:
            return None, {}, "no endpoint_metrics measurement yet"
        _require(meta, ("feedback_total",), "endpoint_metrics", storage_id)
        total, used = int(meta["feedback_total"]), int(state.get("feedback_used", 0))
        if total - used < min_new_feedback:
            return None, {}, f"{total - used} new feedback records (need {min_new_feedback})"
        wait = cooling_down(state, cooldown_s, clock(), "last_build_at")
        if wait > 0:
            return None, {}, f"{total - used} new feedback records; cooling down {wait:.0f}s more"
        reason = f"{total - used} new feedback records (threshold {min_new_feedback}; {total} in all)"
        request = dg.RunRequest(run_key=f"feedback-{total}", job_name=feedback_dataset_job.name, tags={
            "llmops/sensor": "feedback_dataset_sensor", "llmops/reason": reason,
            "llmops/feedback_total": str(total), "llmops/feedback_new": str(total - used)})
        return request, {"feedback_used": total, "last_build_at": clock()}, reason

    def _fine_tune_step(context, state: dict, building: bool) -> tuple[dg.RunRequest | None, dict, str]:
        """(b) a new feedback_dataset built by its own job (not rebuilt by retrain or lifecycle, which add no
        feedback) with examples → retrain, fine-tuning the promoted model on them."""
        records = context.instance.fetch_materializations(dg.AssetKey("feedback_dataset"), limit=1).records
        if not records or records[0].storage_id <= state.get("feedback_dataset", 0):
            return None, {}, "no new feedback_dataset build"
        storage_id = records[0].storage_id
        meta = metadata_values(records[0])
        run = context.instance.get_run_by_id(records[0].run_id) if records[0].run_id else None
        if run is None or run.job_name != feedback_dataset_job.name:  # e.g. retrain rebuilds it: no new feedback
            return None, {"feedback_dataset": storage_id}, (f"feedback_dataset event {storage_id} is not from a "
                                                            f"{feedback_dataset_job.name} run")
        _require(meta, ("examples", "delta_version"), "feedback_dataset", storage_id)
        examples, version = int(meta["examples"]), int(meta["delta_version"])
        if examples == 0:  # consumed: an empty build changes nothing to train on
            return None, {"feedback_dataset": storage_id}, f"feedback_dataset build {storage_id} has no examples"
        # the events below stay unconsumed: the newest build acts once nothing holds it
        in_flight = context.instance.get_runs_count(dg.RunsFilter(job_name=feedback_dataset_job.name,
                                                                   statuses=IN_FLIGHT))
        if building or in_flight:
            return None, {}, f"a newer feedback_dataset is being built; v{version} waits for it"
        wait = cooling_down(state, cooldown_s, clock(), "last_fine_tune_at")
        if wait > 0:
            return None, {}, f"feedback_dataset v{version} ({examples} examples); cooling down {wait:.0f}s more"
        export, which = promoted_export(context)
        if export is None:
            return None, {}, f"feedback_dataset v{version} ({examples} examples) but {which}"
        reason = (f"feedback_dataset v{version}: {examples} good-feedback examples "
                  f"(of {int(meta.get('feedback', 0))} feedback records); fine-tuning {which} at {export['model_dir']}")
        request = dg.RunRequest(
            run_key=f"feedback-finetune-{storage_id}", job_name=retrain_job.name,
            run_config=fine_tune_config(last_training_config(context, retrain_job.name), str(export["model_dir"])),
            tags={"llmops/sensor": "feedback_dataset_sensor", "llmops/reason": reason[:1000],
                  FEEDBACK_VERSION_TAG: str(version), "llmops/feedback_examples": str(examples),
                  "llmops/fine_tune_from": f"{export.get('registered_name', '?')} v{export.get('version', '?')}"})
        return request, {"feedback_dataset": storage_id, "last_fine_tune_at": clock()}, reason

    @dg.sensor(name="feedback_dataset_sensor", jobs=[feedback_dataset_job, retrain_job],
               minimum_interval_seconds=minimum_interval_seconds, default_status=dg.DefaultSensorStatus.STOPPED)
    def feedback_dataset_sensor(context: dg.SensorEvaluationContext):
        """Builds the feedback fine-tuning dataset once enough new feedback has been ingested, then fine-tunes the
        promoted model on each new build that has examples (the retrain job, init_from its export)."""
        state = load_cursor(context.cursor)
        build, build_state, build_why = _build_step(context, state)
        fine_tune, tune_state, tune_why = _fine_tune_step(context, state, building=build is not None)
        requests = [r for r in (build, fine_tune) if r is not None]
        cursor = json.dumps({**state, **build_state, **tune_state})
        if not requests and cursor == json.dumps(state):
            return dg.SkipReason(f"{build_why}; {tune_why}")
        if not requests:
            return dg.SensorResult(skip_reason=f"{build_why}; {tune_why}", cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return feedback_dataset_sensor


def make_reindex_sensor(cooldown_s: float = 1800.0, minimum_interval_seconds: int = 60,
                        clock: Callable[[], float] = time.time) -> dg.SensorDefinition:
    @dg.sensor(name="vector_db_health_sensor", job=reindex_job, minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.STOPPED)
    def vector_db_health_sensor(context: dg.SensorEvaluationContext):
        """Rebuilds the RAG index when infra_health finds the vector DB stale, empty or unreachable."""
        state = load_cursor(context.cursor)
        storage_id, meta = _latest(context, "infra_health")
        if storage_id is None or storage_id <= state.get("infra_health", 0):
            return dg.SkipReason("no new infra_health measurement")
        _require(meta, ("vector_db_healthy", "vector_db"), "infra_health", storage_id)
        if meta["vector_db_healthy"]:
            return dg.SensorResult(skip_reason="vector DB healthy", cursor=json.dumps({**state, "infra_health": storage_id}))
        wait = cooling_down(state, cooldown_s, clock())
        if wait > 0:
            return dg.SkipReason(f"vector DB unhealthy; cooling down {wait:.0f}s more")
        reason = f"vector DB unhealthy: {meta.get('vector_db_detail', '?')}"
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"reindex-{storage_id}", tags={
                "llmops/sensor": "vector_db_health_sensor", "llmops/reason": reason,
                "llmops/infra_health_event": str(storage_id),
                **{f"llmops/{k}": str(v) for k, v in meta["vector_db"].items() if k in ("rows", "data_commit",
                                                                                       "latest_data_commit")}})],
            cursor=json.dumps({**state, "infra_health": storage_id, "last_request_at": clock()}))

    return vector_db_health_sensor


monitoring_retrain_sensor = make_retrain_sensor()
feedback_dataset_sensor = make_feedback_sensor()
vector_db_health_sensor = make_reindex_sensor()
