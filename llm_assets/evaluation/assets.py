"""Evaluation stage: the exported model's held-out metrics, and the blocking gate before deployment."""

# No `from __future__ import annotations`: Dagster 1.13 reads the config and resource
# parameters' annotations as objects, and string annotations break its config inference.

import json

import dagster as dg

from llm_assets.artifacts import ExportedModel, ShardSet
from llm_assets.data.bias import image_markdown
from llm_assets.evaluation import gate, metrics, report as eval_plots, review
from resources.lakehouse import LakehouseResource
from resources.settings import SettingsResource
from resources.tracking import TrackingResource


class EvalConfig(dg.Config):
    """Used by: eval_report. Sample sizes are sequences drawn (seeded) from the validation shards."""

    perplexity_sequences: int = 64
    rouge_samples: int = 16
    toxicity_samples: int = 16
    prompt_tokens: int = 32
    """Prompt: the first tokens of a validation sequence."""
    continuation_tokens: int = 32
    """Reference: the next tokens; the greedy continuation has this length too."""
    max_new_tokens: int = 32
    """Length of the sampled generations scored for toxicity."""
    temperature: float = 1.0
    top_k: int = 50
    toxicity_threshold: float = 0.5
    batch_size: int = 8
    seed: int = 0
    review_samples: int = 4
    """Generations of each kind (continuation, sampled, QA) queued for human review per version."""


class GateConfig(dg.Config):
    """Used by: eval_gate. `max_*` is an upper bound, `min_*` a lower bound (see evaluation/gate.py)."""

    max_perplexity: float = gate.DEFAULT_THRESHOLDS["max_perplexity"]
    min_rouge_l: float = gate.DEFAULT_THRESHOLDS["min_rouge_l"]
    max_toxicity_rate: float = gate.DEFAULT_THRESHOLDS["max_toxicity_rate"]
    max_regression: dict[str, float] = gate.DEFAULT_REGRESSIONS
    """Metric -> relative worsening allowed against the promoted version (0.25: 25% worse at most)."""


def metrics_table_md(values: dict[str, float]) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in values.items())
    return f"| metric | value |\n|---|---|\n{rows}"


@dg.asset(group_name="evaluation", kinds={"pytorch", "mlflow"})
def eval_report(context: dg.AssetExecutionContext, config: EvalConfig, exported_model: ExportedModel,
                token_shards: ShardSet, settings: SettingsResource, lakehouse: LakehouseResource,
                tracking: TrackingResource) -> dg.Output[dict]:
    """Perplexity, bits per byte, ROUGE, BLEU, QA exact match/F1 and toxicity of the exported model on held-out data."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_assets.tokens.shards import read_split

    sequences = read_split(token_shards.path, "validation")
    if len(sequences) == 0:
        raise ValueError(f"token_shards at {token_shards.path} has no validation sequences to evaluate on")
    tokenizer = AutoTokenizer.from_pretrained(exported_model.path)
    model = AutoModelForCausalLM.from_pretrained(exported_model.path, dtype=torch.float32)
    context.log.info(f"evaluating {exported_model.registered_name} v{exported_model.version} on "
                     f"{len(sequences)} validation sequences of {sequences.shape[1]} tokens")
    result = metrics.evaluate_model(model, tokenizer, sequences, examples=config.review_samples,
                                    **config.model_dump(exclude={"review_samples"}))
    name, version = exported_model.registered_name, exported_model.version
    queued = review.enqueue(lakehouse.root, name, version, eval_plots.review_samples(result))
    verdicts = review.summary(lakehouse.root, name, version)
    report = {
        "model": {"registered_name": exported_model.registered_name, "version": exported_model.version,
                  "path": exported_model.path, "mlflow_run_id": exported_model.mlflow_run_id,
                  "data_commit": exported_model.data_commit},
        "token_shards": {"path": token_shards.path, "manifest_sha256": token_shards.manifest_sha256},
        "config": config.model_dump(),
        "human_review": verdicts,
        **result,
    }
    path = settings.path("reports", "eval", f"{name}-v{version}.json")
    path.write_text(json.dumps(report, indent=2))
    baseline = promoted_baseline(tracking, exported_model, path.parent)
    trend = eval_plots.trend_plot(eval_plots.version_history(path.parent, name), path.with_suffix(".trend.png"))

    client = tracking.client()
    for metric, value in result["metrics"].items():
        client.log_metric(exported_model.mlflow_run_id, f"eval_{metric}", value)
    for artifact in (path, trend):
        client.log_artifact(exported_model.mlflow_run_id, str(artifact), artifact_path="eval")
    context.log.info(f"queued {queued} generations for human review; verdicts so far {verdicts}")

    values = result["metrics"]
    examples = "\n\n".join(f"**prompt** {e['prompt']!r}\n\n**reference** {e['reference']!r}\n\n"
                           f"**prediction** {e['prediction']!r}" for e in result["examples"])
    return dg.Output(
        {**values, **result["samples"], "report_path": str(path), "model_version": exported_model.version,
         "baseline": baseline},
        metadata={
            **{k: dg.MetadataValue.float(float(v)) for k, v in values.items()},
            **{k: dg.MetadataValue.int(int(v)) for k, v in result["samples"].items()},
            **{k: dg.MetadataValue.int(int(v)) for k, v in result["lengths"].items()},
            "metrics": dg.MetadataValue.md(metrics_table_md(values)),
            "ci95": dg.MetadataValue.json(result["intervals"]),
            "examples": dg.MetadataValue.md(examples or "-"),
            "report": dg.MetadataValue.path(str(path)),
            "model_version": exported_model.version,
            "promoted_version": baseline["version"] if baseline else "none",
            "trend": dg.MetadataValue.md(image_markdown(trend, "metrics by model version")),
            "human_review": dg.MetadataValue.json(verdicts),
            "mlflow_run_id": exported_model.mlflow_run_id,
            "data_commit": exported_model.data_commit,
        },
    )


def promoted_baseline(tracking: TrackingResource, model: ExportedModel, reports_dir) -> dict | None:
    """{"version", "metrics"} of the promoted version of the same registered model, when it is another
    version and its report exists; else None."""
    version = tracking.promoted_version(model.registered_name)
    report = reports_dir / f"{model.registered_name}-v{version}.json"
    if version is None or version == model.version or not report.exists():
        return None
    return {"version": version, "metrics": json.loads(report.read_text())["metrics"]}


@dg.asset_check(asset=eval_report, blocking=True,
                description="Perplexity, ROUGE-L and toxicity within thresholds; blocks quantize and deploy.")
def eval_gate(config: GateConfig, eval_report: dict) -> dg.AssetCheckResult:
    """Each gated metric against its threshold and its allowed regression; a missing metric fails."""
    thresholds = config.model_dump(exclude={"max_regression"})
    _, rows = gate.evaluate_gate(eval_report, thresholds)
    rows += gate.regression_rows(eval_report, eval_report.get("baseline"), config.max_regression)
    passed = all(r.passed for r in rows)
    metadata: dict = {"gate": dg.MetadataValue.md(gate.gate_table_md(rows))}
    for r in rows:
        metadata[f"{r.metric}"] = dg.MetadataValue.float(r.value) if r.value is not None else "missing"
        key = r.metric if r.op in ("<=", ">=") else f"{r.metric}_vs_promoted"
        metadata[f"{key}_threshold"] = dg.MetadataValue.text(f"{r.op} {r.threshold:g}")
        metadata[f"{key}_passed"] = dg.MetadataValue.bool(r.passed)
    failed = [f"{r.metric}: {r.reason}" for r in rows if not r.passed]
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
        description="all metrics within thresholds" if passed else f"failed: {'; '.join(failed)}",
    )


class TaskScoresConfig(dg.Config):
    """Used by: task_scores. lm-evaluation-harness tasks on the exported model (see evaluation/tasks.py)."""

    tasks: list[str] = ["llmops_next_passage", "llmops_cloze", "llmops_cloze_gen"]
    """Task YAML names in llm_assets/evaluation/tasks/, or paths to lm-eval task YAML files."""
    standard_tasks: list[str] = []
    """lm-eval's own tasks, e.g. SuperGLUE ["boolq", "cb", "copa", "rte", "wic", "wsc"] or HELM-style
    ["hellaswag", "openbookqa", "piqa", "arc_easy", "mmlu"]. Their data is on the Hugging Face hub:
    set `offline: false` on a machine that reaches it; offline each is reported missing with the reason."""
    offline: bool = True
    samples: int = 100
    """Samples per task: rows built from the validation documents, and lm-eval's limit."""
    context_words: int = 32
    choice_words: int = 8
    """Length of each choice of llmops_next_passage."""
    batch_size: int = 16
    seed: int = 0
    timeout_s: int = 1800


@dg.asset(group_name="evaluation", kinds={"pytorch", "mlflow"})
def task_scores(context: dg.AssetExecutionContext, config: TaskScoresConfig, exported_model: ExportedModel,
                token_shards: ShardSet, settings: SettingsResource, tracking: TrackingResource) -> dg.Output[dict]:
    """Task benchmarks (lm-evaluation-harness, offline) of the exported model on held-out validation documents."""
    from llm_assets.evaluation import tasks as lm_tasks

    run_dir = settings.dir("reports", "eval", f"{exported_model.registered_name}-v{exported_model.version}-tasks")
    rows = lm_tasks.build_task_data(token_shards.path, exported_model.path, run_dir / "data", samples=config.samples,
                                    context_words=config.context_words, choice_words=config.choice_words,
                                    seed=config.seed)
    context.log.info(f"task data from the validation shards: {rows}; running lm-eval on "
                     f"{len(config.tasks) + len(config.standard_tasks)} tasks")
    scores = lm_tasks.run_tasks(exported_model.path, config.tasks, run_dir, standard_tasks=config.standard_tasks,
                                samples=config.samples, batch_size=config.batch_size, seed=config.seed,
                                offline=config.offline, cache_dir=settings.cache("huggingface"),
                                timeout_s=config.timeout_s)
    for task, s in scores.items():
        if "missing" in s:
            context.log.warning(f"{task}: missing: {s['missing']}")
        else:
            context.log.info(f"{task}: {s}")

    values = lm_tasks.flat_metrics(scores)
    client = tracking.client()
    for name, value in values.items():
        client.log_metric(exported_model.mlflow_run_id, name, value)
    client.log_artifact(exported_model.mlflow_run_id, str(run_dir / "scores.json"), artifact_path="eval")
    return dg.Output(scores, metadata={
        **{k: dg.MetadataValue.float(float(v)) for k, v in values.items()},
        **{f"task_{t}_n": dg.MetadataValue.int(s["n"]) for t, s in scores.items() if "n" in s},
        "tasks": dg.MetadataValue.md(lm_tasks.scores_table_md(scores)),
        "missing": dg.MetadataValue.int(sum("missing" in s for s in scores.values())),
        "report": dg.MetadataValue.path(str(run_dir / "scores.json")),
        "model_version": exported_model.version,
        "mlflow_run_id": exported_model.mlflow_run_id,
    })
