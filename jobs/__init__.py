"""Named jobs over the asset graph, and the schedules that keep evaluating and monitoring the deployed model."""

from __future__ import annotations

import os

import dagster as dg

from resources.tracking import TrackingResource


def executor_from_env(env: dict[str, str] | None = None) -> dg.ExecutorDefinition | None:
    """LLMOPS_EXECUTOR: `k8s` puts each step in its own Kubernetes pod (dagster-k8s's k8s_job_executor; give the
    Spark and training steps their resources with `per_step_k8s_config` in the run config, see
    infra/helm/dagster-values.yaml), `in_process` runs every step in the run's process; unset: Dagster's
    default (a process per step)."""
    choice = (os.environ if env is None else env).get("LLMOPS_EXECUTOR", "")
    if choice == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    if choice == "in_process":
        return dg.in_process_executor
    if choice:
        raise ValueError(f"LLMOPS_EXECUTOR must be 'k8s', 'in_process' or unset, got {choice!r}")
    return None

lifecycle_job = dg.define_asset_job(
    "lifecycle", selection=dg.AssetSelection.all(),
    description="The whole life of the model: raw text to a monitored endpoint.",
)
curation_job = dg.define_asset_job(
    "curation", selection=dg.AssetSelection.groups("data"),
    description="Re-curate the corpus from the raw source and commit a new data version.",
)
retrain_job = dg.define_asset_job(
    "retrain", selection=dg.AssetSelection.assets("trained_checkpoint").downstream()
    - dg.AssetSelection.assets("pruned_model", "quantized_int4_model", "distilled_model"),
    description="Train again on the newest shards, then re-evaluate, gate and deploy as a canary.",
)
evaluation_job = dg.define_asset_job(
    "evaluation", selection=dg.AssetSelection.groups("evaluation"),
    description="Evaluate the exported model again: tasks, RAG, red team, bias, resources, the report and its gate.",
)
redeploy_job = dg.define_asset_job(
    "redeploy", selection=dg.AssetSelection.assets("endpoint", "endpoint_metrics"),
    description="Start the serving processes for the current model version again.",
)

evaluate_promoted_job = dg.define_asset_job(
    "evaluate_promoted", selection=dg.AssetSelection.assets("exported_model") | dg.AssetSelection.groups("evaluation"),
    description="Evaluate the promoted model version (exported_model restores it from the registry with "
                "restore_version): after a rollback or a rejected canary it is not the newest export.",
)


@dg.schedule(name="continuous_evaluation", job=evaluate_promoted_job, cron_schedule="0 */6 * * *",
             default_status=dg.DefaultScheduleStatus.STOPPED)
def continuous_evaluation_schedule(context: dg.ScheduleEvaluationContext, tracking: TrackingResource):
    """Every 6 hours: the promoted version of the exported model, on the fixed held-out set and the newest shards."""
    event = context.instance.get_latest_materialization_event(dg.AssetKey("exported_model"))
    if event is None or event.asset_materialization is None:
        return dg.SkipReason("no model was exported yet")
    name = event.asset_materialization.metadata["registered_name"].value
    promoted = tracking.promoted_version(name)
    if promoted is None:
        return dg.SkipReason(f"no version of {name} is promoted yet")
    return dg.RunRequest(
        run_config={"ops": {"exported_model": {"config": {"registered_name": name, "restore_version": promoted}}}},
        tags={"llmops/schedule": "continuous_evaluation",
              "llmops/reason": f"scheduled evaluation of promoted {name} v{promoted}", "llmops/model_version": promoted})

# Monitoring loop (sensors/monitoring.py): a fine-tuning dataset from good feedback; the RAG index rebuilt.
feedback_dataset_job = dg.define_asset_job(
    "build_feedback_dataset", selection=dg.AssetSelection.assets("feedback_dataset"),
    description="Build the fine-tuning dataset from prompt/response pairs users rated good.",
)
reindex_job = dg.define_asset_job(
    "reindex", selection=dg.AssetSelection.assets("rag_index"),
    description="Rebuild the RAG index from the latest curated data commit.",
)
optimization_job = dg.define_asset_job(
    "optimization", selection=dg.AssetSelection.groups("optimization"),
    description="Quantize (int8, int4), prune and distill the exported model, each scored against it.",
)
# Rollout (sensors/rollout.py, sensors/endpoint.py): judge a live canary or prompt A/B, roll back a promoted version
# that regressed, roll out an edited prompt, refresh after data.
canary_job = dg.define_asset_job(
    "canary", selection=dg.AssetSelection.assets("canary_analysis"),
    description="Judge the live canary (model version or prompt version) on its traffic: promote, roll back or wait.",
)
rollback_job = dg.define_asset_job(
    "rollback", selection=dg.AssetSelection.assets("endpoint_rollback"),
    description="Compare the promoted version serving alone with the previous promoted version on live traffic; "
                "serve the previous one again if the promoted one regressed.",
)
prompt_rollout_job = dg.define_asset_job(
    "prompt_rollout", selection=dg.AssetSelection.assets("prompt_registry"),
    description="Register edited prompt templates and A/B test the new version of the applied prompt.",
)
data_refresh_job = dg.define_asset_job(
    "data_refresh", selection=dg.AssetSelection.assets("token_shards", "rag_index"),
    description="Rebuild the token shards (tokenizer unchanged) and update the RAG index for a new data commit.",
)
monitoring_job = dg.define_asset_job(
    "monitoring", selection=dg.AssetSelection.groups("monitoring"),
    description="Measure the live endpoint: metrics, cost, quality, drift, health and the report.",
)
monitoring_schedule = dg.ScheduleDefinition(
    name="monitoring_every_5_minutes", job=monitoring_job, cron_schedule="*/5 * * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)

all_jobs = [lifecycle_job, curation_job, retrain_job, evaluation_job, evaluate_promoted_job, redeploy_job,
            feedback_dataset_job, reindex_job, optimization_job, canary_job, rollback_job, prompt_rollout_job, data_refresh_job, monitoring_job]
all_schedules = [continuous_evaluation_schedule, monitoring_schedule]
