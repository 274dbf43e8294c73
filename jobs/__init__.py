"""Named jobs over the asset graph, and the schedule that keeps evaluating the deployed model."""

from __future__ import annotations

import dagster as dg

lifecycle_job = dg.define_asset_job(
    "lifecycle", selection=dg.AssetSelection.all(),
    description="The whole life of the model: raw text to a monitored endpoint.",
)
curation_job = dg.define_asset_job(
    "curation", selection=dg.AssetSelection.groups("data"),
    description="Re-curate the corpus from the raw source and commit a new data version.",
)
retrain_job = dg.define_asset_job(
    "retrain", selection=dg.AssetSelection.assets("trained_checkpoint").downstream(),
    description="Train again on the newest shards, then re-evaluate, gate and redeploy.",
)
evaluation_job = dg.define_asset_job(
    "evaluation", selection=dg.AssetSelection.groups("evaluation"),
    description="Evaluate the exported model again: tasks, RAG, red team, bias, resources, the report and its gate.",
)
redeploy_job = dg.define_asset_job(
    "redeploy", selection=dg.AssetSelection.assets("endpoint", "endpoint_metrics"),
    description="Start the serving processes for the current model version again.",
)

continuous_evaluation_schedule = dg.ScheduleDefinition(
    name="continuous_evaluation", job=evaluation_job, cron_schedule="0 */6 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
)

all_jobs = [lifecycle_job, curation_job, retrain_job, evaluation_job, redeploy_job]
all_schedules = [continuous_evaluation_schedule]
