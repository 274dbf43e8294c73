"""Sensors that roll changes out: a live canary or prompt A/B gets judged, an edited prompt template gets
registered (and A/B tested), a new data commit refreshes the token shards and the RAG index.

Same rules as sensors/monitoring.py: a `run_key` per event so nothing is requested twice, a JSON cursor,
and a cool-down between requests.
"""

from __future__ import annotations

import json
import os
import time

import dagster as dg

from jobs import canary_job, data_refresh_job, prompt_rollout_job
from llm_assets.deployment import prompts
from resources.serving import ServingResource
from sensors.monitoring import IN_FLIGHT, _latest, cooling_down, load_cursor


def live_arms(routes: dict) -> list[str]:
    """What is under test in a route table: 'model versions a, b' and/or 'prompt p versions x, y'."""
    arms = []
    for name, model in routes.get("models", {}).items():
        if len(model["versions"]) > 1:
            arms.append(f"{name} model versions {', '.join(sorted(model['versions']))}")
        prompt = model.get("prompt")
        live = routes.get("prompts", {}).get(prompt, {}).get("versions", {}) if prompt else {}
        if len(live) > 1:
            arms.append(f"prompt {prompt} versions {', '.join(sorted(live))}")
    return arms


def make_canary_sensor(interval_s: float = 300.0, minimum_interval_seconds: int = 30) -> dg.SensorDefinition:
    @dg.sensor(name="canary_sensor", job=canary_job, minimum_interval_seconds=minimum_interval_seconds,
               default_status=dg.DefaultSensorStatus.STOPPED)
    def canary_sensor(context: dg.SensorEvaluationContext, serving: ServingResource):
        """While a canary model version or a prompt A/B test is live, has canary_analysis judge it every
        `interval_s` (it promotes, rolls back, or waits for more traffic)."""
        current = serving.current()
        arms = live_arms(current.routes) if current else []
        if not arms:
            return dg.SkipReason("no canary or prompt A/B test is live")
        state = load_cursor(context.cursor)
        wait = cooling_down(state, interval_s, time.time())
        if wait > 0:
            return dg.SkipReason(f"{'; '.join(arms)} live; next analysis in {wait:.0f}s")
        busy = context.instance.get_run_records(dg.RunsFilter(job_name=canary_job.name, statuses=IN_FLIGHT), limit=1)
        if busy:  # one analysis at a time: a slow one must not pile up others behind it
            return dg.SkipReason(f"{'; '.join(arms)} live; canary run {busy[0].dagster_run.run_id} still in flight")
        now = time.time()
        return dg.SensorResult(
            run_requests=[dg.RunRequest(run_key=f"canary-{now:.0f}", tags={
                "llmops/sensor": "canary_sensor", "llmops/reason": f"live: {'; '.join(arms)}"})],
            cursor=json.dumps({"last_request_at": now}))

    return canary_sensor


@dg.sensor(job=prompt_rollout_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED)
def prompt_change_sensor(context: dg.SensorEvaluationContext):
    """Registers (and A/B tests) prompt templates whose text changed since the last prompt_registry run."""
    versions = {p.name: p.version for p in prompts.load_templates()}
    storage_id, meta = _latest(context, "prompt_registry")
    applied = meta.get("applied")
    if storage_id is not None and versions.get(applied) == meta.get("applied_version"):
        return dg.SkipReason(f"prompt {applied} unchanged ({meta.get('applied_version')})")
    key = ",".join(f"{n}@{v}" for n, v in sorted(versions.items()))
    if key == context.cursor:
        return dg.SkipReason(f"already requested a rollout of {key}")
    reason = (f"prompt {applied} changed: {meta.get('applied_version')} -> {versions.get(applied)}"
              if storage_id is not None else "prompt templates never registered")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"prompts-{key}", tags={
        "llmops/sensor": "prompt_change_sensor", "llmops/reason": reason})], cursor=key)


@dg.sensor(job=data_refresh_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.STOPPED)
def data_commit_sensor(context: dg.SensorEvaluationContext):
    """A new curated data commit rebuilds the token shards (with the tokenizer as it is) and updates the RAG
    index incrementally (only new and changed passages are embedded)."""
    storage_id, meta = _latest(context, "curated_corpus")
    if storage_id is None:
        return dg.SkipReason("curated_corpus was never materialized")
    commit = str(meta.get("data_commit", ""))
    shards_id, shards = _latest(context, "token_shards")
    if shards_id is not None and str(shards.get("data_commit", "")) == commit:
        return dg.SkipReason(f"token_shards already built from data commit {commit}")
    if context.cursor == commit:
        return dg.SkipReason(f"refresh for data commit {commit} already requested")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"data-{commit}", tags={
        "llmops/sensor": "data_commit_sensor", "llmops/reason": f"new data commit {commit} on curated_corpus",
        "llmops/data_commit": commit})], cursor=commit)


# LLMOPS_CANARY_INTERVAL_S: seconds between analyses of a live canary (the loop demo uses 20).
canary_sensor = make_canary_sensor(interval_s=float(os.environ.get("LLMOPS_CANARY_INTERVAL_S", "300")))
