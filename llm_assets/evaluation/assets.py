"""Evaluation stage: the exported model's held-out metrics, and the blocking gate before deployment."""

# No `from __future__ import annotations`: Dagster 1.13 reads the config and resource
# parameters' annotations as objects, and string annotations break its config inference.

import json

import dagster as dg

from llm_assets.artifacts import ExportedModel, ShardSet
from llm_assets.evaluation import gate, metrics
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


class GateConfig(dg.Config):
    """Used by: eval_gate. `max_*` is an upper bound, `min_*` a lower bound (see evaluation/gate.py)."""

    max_perplexity: float = gate.DEFAULT_THRESHOLDS["max_perplexity"]
    min_rouge_l: float = gate.DEFAULT_THRESHOLDS["min_rouge_l"]
    max_toxicity_rate: float = gate.DEFAULT_THRESHOLDS["max_toxicity_rate"]


def metrics_table_md(values: dict[str, float]) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in values.items())
    return f"| metric | value |\n|---|---|\n{rows}"


@dg.asset(group_name="evaluation", kinds={"pytorch", "mlflow"})
def eval_report(context: dg.AssetExecutionContext, config: EvalConfig, exported_model: ExportedModel,
                token_shards: ShardSet, settings: SettingsResource,
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
    result = metrics.evaluate_model(model, tokenizer, sequences, **config.model_dump())
    report = {
        "model": {"registered_name": exported_model.registered_name, "version": exported_model.version,
                  "path": exported_model.path, "mlflow_run_id": exported_model.mlflow_run_id,
                  "data_commit": exported_model.data_commit},
        "token_shards": {"path": token_shards.path, "manifest_sha256": token_shards.manifest_sha256},
        "config": config.model_dump(),
        **result,
    }
    path = settings.path("reports", "eval", f"{exported_model.registered_name}-v{exported_model.version}.json")
    path.write_text(json.dumps(report, indent=2))

    client = tracking.client()
    for name, value in result["metrics"].items():
        client.log_metric(exported_model.mlflow_run_id, f"eval_{name}", value)
    client.log_artifact(exported_model.mlflow_run_id, str(path), artifact_path="eval")

    values = result["metrics"]
    examples = "\n\n".join(f"**prompt** {e['prompt']!r}\n\n**reference** {e['reference']!r}\n\n"
                           f"**prediction** {e['prediction']!r}" for e in result["examples"])
    return dg.Output(
        {**values, **result["samples"], "report_path": str(path), "model_version": exported_model.version},
        metadata={
            **{k: dg.MetadataValue.float(float(v)) for k, v in values.items()},
            **{k: dg.MetadataValue.int(int(v)) for k, v in result["samples"].items()},
            **{k: dg.MetadataValue.int(int(v)) for k, v in result["lengths"].items()},
            "metrics": dg.MetadataValue.md(metrics_table_md(values)),
            "ci95": dg.MetadataValue.json(result["intervals"]),
            "examples": dg.MetadataValue.md(examples or "-"),
            "report": dg.MetadataValue.path(str(path)),
            "model_version": exported_model.version,
            "mlflow_run_id": exported_model.mlflow_run_id,
            "data_commit": exported_model.data_commit,
        },
    )


@dg.asset_check(asset=eval_report, blocking=True,
                description="Perplexity, ROUGE-L and toxicity within thresholds; blocks quantize and deploy.")
def eval_gate(config: GateConfig, eval_report: dict) -> dg.AssetCheckResult:
    """Each gated metric against its threshold; a missing metric fails."""
    passed, rows = gate.evaluate_gate(eval_report, config.model_dump())
    metadata: dict = {"gate": dg.MetadataValue.md(gate.gate_table_md(rows))}
    for r in rows:
        metadata[f"{r.metric}"] = dg.MetadataValue.float(r.value) if r.value is not None else "missing"
        metadata[f"{r.metric}_threshold"] = dg.MetadataValue.text(f"{r.op} {r.threshold:g}")
        metadata[f"{r.metric}_passed"] = dg.MetadataValue.bool(r.passed)
    failed = [r.metric for r in rows if not r.passed]
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
        description="all metrics within thresholds" if passed else f"failed: {', '.join(failed)}",
    )
