"""Deployment stage: the gated model served behind the gateway (canary first), its image, prompts, rollout, rollback."""

# No `from __future__ import annotations`: Dagster 1.13 reads the config and resource
# parameters' annotations as objects, and string annotations break its config inference.

from pathlib import Path

import dagster as dg

from llm_assets.artifacts import Endpoint, ExportedModel, QuantizedModel
from llm_assets.deployment import packaging, prompts, rollout
from resources.lakehouse import LakehouseResource
from resources.serving import ServingResource
from resources.settings import SettingsResource
from resources.tracking import TrackingResource


class EndpointConfig(dg.Config):
    """Used by: endpoint."""

    model_name: str = ""
    """The public model name clients send; empty: the registered model name."""
    smoke_prompt: str = "Hello! What can you do?"
    canary_weight: float = 0.1
    """Share of traffic for a new version while another version serves (a canary, judged later by
    canary_analysis); 1.0 replaces the served version at once."""
    autoscale_max_replicas: int = 0
    """> 0: on a full deployment, start the autoscaler (llm_assets/deployment/autoscaler.py) between the
    serving resource's `replicas` and this many replicas per version."""


@dg.asset(group_name="deployment", kinds={"fastapi"})
def endpoint(context: dg.AssetExecutionContext, config: EndpointConfig, exported_model: ExportedModel,
             quantized_model: QuantizedModel, prompt_registry: dict, serving: ServingResource,
             tracking: TrackingResource) -> dg.Output[Endpoint]:
    """The exported model version served (OpenAI API) behind the llmops gateway: a canary at
    `canary_weight` beside the version already serving, else (first deployment, or weight 1.0) the only
    version, which becomes the registered model's `promoted` version, the next evaluation gate's baseline."""
    name = config.model_name or exported_model.registered_name
    version = exported_model.version
    current = serving.current()
    canary = (current is not None and current.model_name == name and config.canary_weight < 1.0
              and set(current.versions) != {version})
    if canary:
        deployment = serving.add_version(exported_model.path, version, config.canary_weight, log=context.log)
    else:
        deployment = serving.deploy(exported_model.path, name, version, log=context.log)
        if applied := prompt_registry["applied"]:  # a canary keeps the prompt versions already live
            prompt = prompt_registry["prompts"][applied]
            deployment = serving.set_prompt(applied, {prompt["version"]: {"template": prompt["template"],
                                                                          "weight": 1.0}})
    try:
        reply = serving.smoke_test(deployment, config.smoke_prompt, model_version=version)
    except BaseException:
        if canary:  # roll the canary back; the stable version keeps serving
            serving.remove_version(version, log=context.log)
        else:
            serving.stop()
        raise
    if not canary:
        tracking.promote(exported_model.registered_name, version)
        if config.autoscale_max_replicas > 0:
            scaler = serving.start_autoscaler(serving.replicas, max(serving.replicas, config.autoscale_max_replicas))
            context.log.info(f"autoscaler pid {scaler.pid}: {serving.replicas}-{config.autoscale_max_replicas} "
                             f"replicas per version; decisions in {serving.run_dir}/logs/autoscaler.jsonl")
    role = "canary" if canary else "stable (promoted)"
    context.log.info(f"{name} v{version} serves at {deployment.url} as {role}; weights {deployment.weights}; "
                     f"smoke reply {reply!r}")
    value = Endpoint(url=deployment.url, model=name, model_version=version,
                     mlflow_run_id=exported_model.mlflow_run_id, data_commit=exported_model.data_commit)
    table = "| version | weight | replicas |\n|---|---|---|\n" + "\n".join(
        f"| {v} | {e['weight']:.3f} | {len(e['replicas'])} |" for v, e in deployment.versions.items())
    return dg.Output(value, metadata={
        "url": dg.MetadataValue.url(deployment.url),
        "model": name,
        "model_version": version,
        "role": "canary" if canary else "stable",
        "stable_version": deployment.model_version,
        "weights": dg.MetadataValue.json(deployment.weights),
        "versions": dg.MetadataValue.md(table),
        "mlflow_run_id": exported_model.mlflow_run_id,
        "data_commit": exported_model.data_commit,
        "backend": serving.backend,
        "replicas": dg.MetadataValue.json({v: e["replicas"] for v, e in deployment.versions.items()}),
        "gateway_pid": deployment.gateway_pid,
        "smoke_prompt": config.smoke_prompt,
        "smoke_reply": reply,
        "int8_size_ratio": dg.MetadataValue.float(quantized_model.size_ratio),
    })


# ---- packaging: one OCI build context per model version (infra/serving/ templates)



class ServingImageConfig(dg.Config):
    """Used by: serving_image."""

    registry: str = "llmops"
    """Image repository prefix: the context is meant for `<registry>/<model>:v<version>`."""


@dg.asset(group_name="deployment", kinds={"docker"})
def serving_image(context: dg.AssetExecutionContext, config: ServingImageConfig, exported_model: ExportedModel,
                  quantized_model: QuantizedModel, settings: SettingsResource,
                  serving: ServingResource) -> dg.Output[packaging.ImageContext]:
    """OCI build context (Dockerfile, entrypoint, pinned requirements, weights with sha256) that serves the
    gated model version; `docker build` it to ship the version as an image."""
    name = exported_model.registered_name.lower()
    out_dir = settings.path("images", name, f"v{exported_model.version}")
    image = packaging.build_context(
        exported_model.path, out_dir, name, exported_model.version, backend=serving.backend,
        cb_num_blocks=serving.cb_num_blocks, cb_max_batch_tokens=serving.cb_max_batch_tokens,
        labels={"MLFLOW_RUN_ID": exported_model.mlflow_run_id, "DATA_COMMIT": exported_model.data_commit},
        registry=config.registry)
    context.log.info(f"build context for {image.tag} at {image.path}: {len(image.files)} files, "
                     f"digest {image.digest[:12]}")
    return dg.Output(image, metadata={
        "context_path": dg.MetadataValue.path(image.path),
        "image": image.tag,
        "digest": image.digest,
        "build_command": dg.MetadataValue.md(f"`docker build -t {image.tag} {image.path}`"),
        "files": dg.MetadataValue.md("| file | sha256 |\n|---|---|\n" + "\n".join(
            f"| `{p}` | `{h[:16]}` |" for p, h in sorted(image.files.items()))),
        "weights_bytes": image.weights_bytes,
        "backend": serving.backend,
        "model_version": exported_model.version,
        "int8_size_ratio": dg.MetadataValue.float(quantized_model.size_ratio),
    })


# ---- rollout: prompt versions and the canary's verdict


class PromptRegistryConfig(dg.Config):
    """Used by: prompt_registry."""

    templates_dir: str = ""
    """Prompt template YAML files; empty: llm_assets/deployment/prompts/."""
    apply: str = "assistant"
    """The prompt the gateway puts before the served model's chat requests; empty: none."""
    ab_weight: float = 0.5
    """Traffic share of a new version of `apply` while it is A/B tested against the current one."""


@dg.asset(group_name="deployment", kinds={"delta"})
def prompt_registry(context: dg.AssetExecutionContext, config: PromptRegistryConfig,
                    lakehouse: LakehouseResource, serving: ServingResource) -> dg.Output[dict]:
    """Prompt templates versioned by content hash (Delta `prompt_registry`); a new version of the applied
    prompt goes live at once as an A/B test beside the current one, for canary_analysis to judge."""
    templates = prompts.load_templates(config.templates_dir or prompts.TEMPLATES_DIR)
    new = prompts.register(lakehouse.root, templates)
    latest = {p.name: p for p in templates}
    if config.apply and config.apply not in latest:
        raise ValueError(f"prompt_registry: apply={config.apply!r} is not among the templates {sorted(latest)}")
    rollout = "no deployment running: the next endpoint applies it"
    current = serving.current()
    if config.apply and current is not None:
        rollout = _roll_out_prompt(current.routes, latest[config.apply], config.ab_weight, serving)
    context.log.info(f"{len(templates)} prompt templates, {len(new)} new versions; {config.apply}: {rollout}")
    applied = latest.get(config.apply)
    value = {"prompts": {p.name: {"version": p.version, "template": p.template} for p in templates},
             "applied": config.apply, "new_versions": [f"{p.name}@{p.version}" for p in new]}
    return dg.Output(value, metadata={
        "templates": dg.MetadataValue.md("| name | version | template |\n|---|---|---|\n" + "\n".join(
            f"| {p.name} | `{p.version}` | {' '.join(p.template.split())[:120]} |" for p in templates)),
        "new_versions": dg.MetadataValue.json(value["new_versions"]),
        "applied": config.apply or "none",
        "applied_version": applied.version if applied else "none",
        "rollout": rollout,
        "registered_versions": len(prompts.registered(lakehouse.root)),
    })


def _roll_out_prompt(routes: dict, prompt: prompts.PromptVersion, ab_weight: float,
                     serving: ServingResource) -> str:
    """Apply `prompt` to the running deployment: alone when no version of it runs, else as an A/B arm."""
    live = routes.get("prompts", {}).get(prompt.name, {}).get("versions", {})
    if prompt.version in live:
        return f"version {prompt.version} already live ({', '.join(live)})"
    if not live:
        serving.set_prompt(prompt.name, {prompt.version: {"template": prompt.template, "weight": 1.0}})
        return f"version {prompt.version} applied to all traffic"
    stable = max(live, key=lambda v: live[v]["weight"])
    serving.set_prompt(prompt.name, {stable: {**live[stable], "weight": 1 - ab_weight},
                                     prompt.version: {"template": prompt.template, "weight": ab_weight}})
    return f"A/B: {prompt.version} at {ab_weight:.2f} against {stable}"


class LiveLimitsConfig(dg.Config):
    """Limits on one version's live numbers against another's, as in llm_assets/deployment/rollout.py
    (CanaryThresholds)."""

    min_requests: int = 20
    max_error_rate_increase: float = 0.02
    max_latency_p95_ratio: float = 1.5
    max_toxicity_increase: float = 0.05
    max_positive_feedback_drop: float = 0.2
    min_feedback: int = 5

    def thresholds(self) -> rollout.CanaryThresholds:
        return rollout.CanaryThresholds(**{k: getattr(self, k) for k in LiveLimitsConfig.model_fields})


class CanaryConfig(LiveLimitsConfig):
    """Used by: canary_analysis."""

    probe_requests: int = 0
    """> 0: send this many chat requests through the gateway first (quiet demos have no users)."""
    probe_max_tokens: int = 16


@dg.asset(group_name="deployment", kinds={"fastapi"}, deps=["endpoint_metrics"])
def canary_analysis(context: dg.AssetExecutionContext, config: CanaryConfig, endpoint: Endpoint,
                    exported_model: ExportedModel, prompt_registry: dict, serving: ServingResource,
                    tracking: TrackingResource) -> dg.Output[dict]:
    """The canary model version (and a prompt version under A/B test) against the stable one on live
    traffic: promoted, rolled back or left running, with the numbers behind the decision."""
    from llm_assets.monitoring import load

    current = serving.current()
    if current is None:
        raise RuntimeError("canary_analysis: nothing is deployed (materialize endpoint first)")
    logs = Path(serving.run_dir) / "logs"
    if config.probe_requests > 0 and (len(current.versions) > 1 or _prompt_arms(current.routes)):
        records, _ = load.run_load(current.url, current.model_name, config.probe_requests,
                                   max_tokens=config.probe_max_tokens, api_key=serving.api_key,
                                   first_probe=load.probes_logged(rollout.read_jsonl(logs / "requests.jsonl")))
        context.log.info(f"sent {len(records)} probe requests, {sum(r.status == 200 for r in records)} answered")
    limits = config.thresholds()
    requests = rollout.read_jsonl(logs / "requests.jsonl")
    feedback = rollout.read_jsonl(logs / "feedback.jsonl")
    decisions = {}
    if len(current.versions) > 1:
        promoted = tracking.promoted_version(exported_model.registered_name)
        stable = promoted if promoted in current.versions else current.model_version
        candidate = _newest(v for v in current.versions if v != stable)
        decision = _judge(requests, feedback, "model_version", stable, candidate, limits)
        decisions["model"] = decision
        if decision.action == rollout.PROMOTE:
            serving.promote(candidate, log=context.log)
            tracking.promote(exported_model.registered_name, candidate)
        elif decision.action == rollout.ROLLBACK:
            serving.remove_version(candidate, log=context.log)
    if arms := _prompt_arms(current.routes):
        name, live = arms
        stable = max(live, key=lambda v: live[v]["weight"])
        candidate = next(v for v in live if v != stable)
        decision = _judge(requests, feedback, "prompt_version", stable, candidate, limits)
        decisions["prompt"] = decision
        winner = {rollout.PROMOTE: candidate, rollout.ROLLBACK: stable}.get(decision.action)
        if winner:
            serving.set_prompt(name, {winner: {**live[winner], "weight": 1.0}})
    for kind, d in decisions.items():
        context.log.info(f"{kind} {d.candidate.version} vs {d.stable.version}: {d.action} ({'; '.join(d.reasons)})")
    after = serving.current()
    value = {"decisions": {k: d.as_dict() for k, d in decisions.items()}, "weights": after.weights,
             "stable_version": after.model_version}
    return dg.Output(value, metadata={
        "model_decision": decisions["model"].action if "model" in decisions else "no canary",
        "prompt_decision": decisions["prompt"].action if "prompt" in decisions else "no prompt A/B",
        **{f"{k}_analysis": dg.MetadataValue.md(rollout.decision_table_md(d)) for k, d in decisions.items()},
        "weights": dg.MetadataValue.json(after.weights),
        "stable_version": after.model_version,
        "requests_logged": len(requests),
        "feedback_logged": len(feedback),
    })


def _newest(versions) -> str:
    return max(versions, key=lambda v: (len(v), v))  # registry versions are integers as strings


def _prompt_arms(routes: dict) -> tuple[str, dict] | None:
    """(prompt name, live versions) of the served model's prompt when two versions are under test."""
    model = next(iter(routes["models"].values()))
    name = model.get("prompt")
    live = routes.get("prompts", {}).get(name, {}).get("versions", {}) if name else {}
    return (name, live) if len(live) > 1 else None


def _judge(requests, feedback, column: str, stable: str, candidate: str,
           limits: rollout.CanaryThresholds) -> rollout.Decision:
    """Both arms over the same window: the requests since the candidate's first one."""
    if len(requests):
        mine = requests[requests[column].astype(str) == candidate]
        if len(mine):
            requests = requests[requests["timestamp"] >= mine["timestamp"].min()]
    arms = requests[requests[column].astype(str).isin([stable, candidate])] if len(requests) else requests
    toxicity = _toxicity(arms)
    return rollout.decide(rollout.arm_stats(requests, feedback, column, stable, toxicity),
                          rollout.arm_stats(requests, feedback, column, candidate, toxicity), limits)


def _toxicity(requests) -> dict[str, float]:
    """request_id -> toxicity probability of the answer, for the answered requests."""
    from llm_assets.evaluation.metrics import toxicity_probabilities

    answered = requests[requests["status"] == 200] if len(requests) else requests
    if not len(answered):
        return {}
    return dict(zip(answered["request_id"], toxicity_probabilities(answered["response"].fillna("").tolist())))


# ---- rollback: the promoted version against the promoted version it replaced, after the canary is over


class RollbackConfig(LiveLimitsConfig):
    """Used by: endpoint_rollback; the limits apply between the promoted version and the previous one."""

    window_requests: int = 500
    """Requests per version compared: the promoted one's last, since it serves alone; the previous one's last."""
    handover_weight: float = 0.5
    """Traffic share of the restored version while it is smoke tested beside the regressed one."""


NO_ACTION = "no action"


# After canary_analysis where a run has both (retrain, lifecycle), so the two never change the deployment at once.
@dg.asset(group_name="deployment", kinds={"fastapi", "mlflow"}, deps=["endpoint_metrics", "canary_analysis"])
def endpoint_rollback(context: dg.AssetExecutionContext, config: RollbackConfig, exported_model: ExportedModel,
                      lakehouse: LakehouseResource, serving: ServingResource, settings: SettingsResource,
                      tracking: TrackingResource) -> dg.Output[dict]:
    """The promoted version, serving alone, against the promoted version it replaced on their stored live
    traffic: on a regression the previous version serves again (no downtime) and becomes `promoted`, and
    the regressed one is tagged rolled back in MLflow; otherwise nothing changes."""
    from llm_assets.monitoring import tables

    name = exported_model.registered_name
    promoted, previous = tracking.promoted_version(name), tracking.previous_version(name)
    why_not = _no_rollback_reason(serving.current(), tracking, name, promoted, previous)
    if why_not:
        context.log.info(f"endpoint_rollback: {NO_ACTION}: {why_not}")
        return dg.Output({"decision": NO_ACTION, "reasons": [why_not], "promoted": promoted, "previous": previous},
                         metadata={"decision": NO_ACTION, "reason": why_not, "promoted_version": promoted or "none",
                                   "previous_version": previous or "none"})
    requests = tables.read(lakehouse.root, tables.REQUESTS,
                           ["request_id", "timestamp", "model_version", "status", "latency_ms", "response"])
    feedback = tables.read(lakehouse.root, tables.FEEDBACK, ["request_id", "rating", "thumbs"])
    limits = config.thresholds()
    decision = _judge_promoted(requests, feedback, previous, promoted, config.window_requests, limits)
    reason = "; ".join(decision.reasons)
    if decision.action == rollout.ROLLBACK:
        model_dir = tracking.model_dir(name, previous, settings.path("models", "registry"))
        _serve_again(serving, model_dir, previous, config.handover_weight, context.log)
        tracking.promote(name, previous)
        tracking.tag_rolled_back(name, promoted, f"live regression against version {previous}: {reason}")
    context.log.info(f"{name} v{promoted} vs previous v{previous}: {decision.action} ({reason})")
    after, arms = serving.current(), decision.as_dict()
    value = {"decision": decision.action, "reasons": decision.reasons, "promoted": tracking.promoted_version(name),
             "previous": previous, "rolled_back": promoted if decision.action == rollout.ROLLBACK else None,
             "arms": {"previous": arms["stable"], "promoted": arms["candidate"]}}
    return dg.Output(value, metadata={
        "decision": decision.action,
        "reason": reason,
        "analysis": dg.MetadataValue.md(rollout.decision_table_md(decision, ("previous", "promoted"))),
        "arms": dg.MetadataValue.json(value["arms"]),
        "thresholds": dg.MetadataValue.json(arms["thresholds"]),
        "promoted_version": value["promoted"],
        "previous_version": previous,
        "rolled_back_version": value["rolled_back"] or "none",
        "weights": dg.MetadataValue.json(after.weights),
        "requests_logged": len(requests),
        "feedback_logged": len(feedback),
    })


def _no_rollback_reason(current, tracking: TrackingResource, name: str, promoted: str | None,
                        previous: str | None) -> str | None:
    """Why there is nothing to compare, or None when the promoted version serves alone and has a predecessor."""
    if current is None:
        return "nothing is deployed"
    if promoted is None:
        return f"no version of {name} was promoted yet"
    if previous is None:
        return f"no previous promoted version of {name}: version {promoted} is the first"
    if set(current.versions) != {promoted}:
        return (f"the endpoint serves versions {sorted(current.versions)}, not promoted version {promoted} alone "
                f"(a canary is canary_analysis's to judge)")
    rolled_back = tracking.rolled_back_reason(name, previous)
    if rolled_back:
        return f"previous version {previous} was itself rolled back ({rolled_back})"
    return None


def _judge_promoted(requests, feedback, previous: str, promoted: str, window: int,
                    limits: rollout.CanaryThresholds) -> rollout.Decision:
    """The promoted version's requests since it serves alone against the previous version's last ones."""
    before = rollout.last_window(requests, "model_version", previous, window)
    live = rollout.sole_window(requests, "model_version", promoted, window)
    toxicity = _toxicity(requests.loc[before.index.union(live.index)])
    return rollout.judge_regression(rollout.arm_stats(before, feedback, "model_version", previous, toxicity),
                                    rollout.arm_stats(live, feedback, "model_version", promoted, toxicity), limits)


def _serve_again(serving: ServingResource, model_dir: str, version: str, weight: float, log) -> None:
    """Serve `version` beside the regressed version, check that it answers, then give it all traffic: the
    regressed version stops only once the restored one serves."""
    deployment = serving.add_version(model_dir, version, weight, log=log)
    try:
        serving.smoke_test(deployment, model_version=version)
    except BaseException:
        serving.remove_version(version, log=log)
        raise
    serving.promote(version, log=log)
