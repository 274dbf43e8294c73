"""Optimization stage: cheaper copies of the gated model (int8, int4, pruned, distilled), each scored
against the original on quality (validation perplexity, held-out QA), size and CPU speed."""

# No `from __future__ import annotations`: Dagster 1.13 reads the config and resource
# parameters' annotations as objects, and string annotations break its config inference.

import hashlib
import json
import shutil
from pathlib import Path

import dagster as dg

from llm_assets.artifacts import ExportedModel, OptimizedModel, QuantizedModel, ShardSet, TokenizerArtifact
from llm_assets.optimization import compare, distill, prune, quantize
from llm_assets.tokens.assets import local_shards
from llm_assets.training import export, launcher, tracking_utils
from resources.settings import SettingsResource
from resources.tracking import TrackingResource


class ScoringConfig(dg.Config):
    """How an optimized model is compared with the original (shared by every optimization asset)."""

    perplexity_sequences: int = 16
    """Validation sequences on which both perplexities are measured."""
    speed_new_tokens: int = 16
    """Tokens generated per prompt (4 prompts) for the tokens/s figure."""
    seed: int = 0


class QuantizeConfig(ScoringConfig):
    """Used by: quantized_model, quantized_int4_model."""


class PruneConfig(ScoringConfig):
    """Used by: pruned_model."""

    method: str = "magnitude"
    """"magnitude" (global unstructured L1: zeros, same shapes) or "structured" (MLP neurons removed)."""
    sparsity: float = 0.3
    """Share of block weights (magnitude) or of MLP neurons (structured) removed."""


class DistillConfig(ScoringConfig):
    """Used by: distilled_model. The student trains on the token shards with the training worker."""

    n_layer: int = 0
    """Student layers; 0: half the teacher's (at least 1)."""
    n_embd: int = 0
    """Student width; 0: half the teacher's."""
    n_head: int = 0
    """Student attention heads; 0: half the teacher's."""
    temperature: float = 2.0
    alpha: float = 0.5
    """Weight of the soft-target KL; 1 - alpha weighs the LM loss on the shards."""
    nproc: int = 2
    zero_stage: int = 2
    micro_batch_size: int = 8
    max_steps: int = 200
    lr: float = 3e-3
    warmup_steps: int = 20
    log_every: int = 50
    resume: bool = True
    """Reuse a finished student of the same teacher, shards and config."""


def _score(config: ScoringConfig, original_dir: str, candidate, candidate_dir: Path, shard_dir: str,
           name: str) -> tuple[dict, str]:
    """The candidate model scored against the original on the same validation sequences and prompts."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_assets.evaluation.metrics import sample_rows
    from llm_assets.tokens.shards import read_split

    sequences = sample_rows(read_split(shard_dir, "validation"), config.perplexity_sequences, config.seed)
    if len(sequences) == 0:
        raise ValueError(f"token_shards {shard_dir} have no validation sequences to score {name} on")
    tokenizer = AutoTokenizer.from_pretrained(original_dir)
    original = AutoModelForCausalLM.from_pretrained(original_dir, dtype=torch.float32).eval()
    kw = {"new_tokens": config.speed_new_tokens}
    before = compare.score_model(original, tokenizer, sequences, original_dir, **kw)
    after = compare.score_model(candidate, tokenizer, sequences, candidate_dir, **kw)
    return compare.comparison(before, after), compare.comparison_table(before, after, name)


def _metadata(result: dict, table: str, out_dir: Path, source: ExportedModel) -> dict:
    floats = {k: dg.MetadataValue.float(float(v)) for k, v in result.items() if isinstance(v, float)}
    ints = {k: v for k, v in result.items() if isinstance(v, int)}
    return {**floats, **ints, "comparison": dg.MetadataValue.md(table),
            "model_dir": dg.MetadataValue.path(str(out_dir)), "model_version": source.version,
            "validation_sequences_scored": "perplexity on validation shards; QA on evaluation/heldout/qa.jsonl"}


def _quantized(context: dg.AssetExecutionContext, config: QuantizeConfig, exported_model: ExportedModel,
               token_shards: ShardSet, settings: SettingsResource, method: str) -> dg.Output[QuantizedModel]:
    out_dir = settings.dir("models", exported_model.registered_name, f"v{exported_model.version}", method)
    info = quantize.quantize_model_dir(exported_model.path, out_dir, method=method)
    result, table = _score(config, exported_model.path, quantize.load_quantized(out_dir), out_dir,
                           local_shards(token_shards, settings),
                           method)
    context.log.info(f"{method} model x{result['size_ratio']:.2f} size, x{result['speedup']:.2f} tokens/s, "
                     f"perplexity {result['original_perplexity']:.2f} -> {result['perplexity']:.2f}")
    value = QuantizedModel(path=str(out_dir), source=exported_model, size_ratio=result["size_ratio"],
                           perplexity_delta=result["perplexity_delta"])
    return dg.Output(value, metadata={**_metadata(result, table, out_dir, exported_model),
                                      "method": info["method"], "dtype": info["dtype"]})


@dg.asset(group_name="optimization", kinds={"pytorch"})
def quantized_model(context: dg.AssetExecutionContext, config: QuantizeConfig, exported_model: ExportedModel,
                    eval_report: dict, token_shards: ShardSet,
                    settings: SettingsResource) -> dg.Output[QuantizedModel]:
    """int8 copy of the exported model (PyTorch dynamic quantization), with its quality, size and speed change."""
    return _quantized(context, config, exported_model, token_shards, settings, "int8")


@dg.asset(group_name="optimization", kinds={"pytorch"})
def quantized_int4_model(context: dg.AssetExecutionContext, config: QuantizeConfig, exported_model: ExportedModel,
                         eval_report: dict, token_shards: ShardSet,
                         settings: SettingsResource) -> dg.Output[QuantizedModel]:
    """int4-weight copy of the exported model (optimum-quanto), with its quality, size and speed change."""
    return _quantized(context, config, exported_model, token_shards, settings, "int4")


@dg.asset(group_name="optimization", kinds={"pytorch", "huggingface"})
def pruned_model(context: dg.AssetExecutionContext, config: PruneConfig, exported_model: ExportedModel,
                 eval_report: dict, token_shards: ShardSet, settings: SettingsResource) -> dg.Output[OptimizedModel]:
    """The exported model pruned (magnitude or structured, sparsity from config), as a Hugging Face directory."""
    from transformers import AutoModelForCausalLM

    out_dir = settings.dir("models", exported_model.registered_name, f"v{exported_model.version}",
                           f"pruned-{config.method}-{config.sparsity:g}")
    info = prune.prune_model_dir(exported_model.path, out_dir, config.method, config.sparsity)
    result, table = _score(config, exported_model.path, AutoModelForCausalLM.from_pretrained(out_dir).eval(),
                           out_dir, local_shards(token_shards, settings), f"pruned ({config.method})")
    context.log.info(f"{config.method} pruning at {config.sparsity:g}: weight sparsity {info['weight_sparsity']:.3f}, "
                     f"x{result['speedup']:.2f} tokens/s, perplexity {result['original_perplexity']:.2f} -> "
                     f"{result['perplexity']:.2f}")
    value = OptimizedModel(path=str(out_dir), source=exported_model, method=f"pruned-{config.method}",
                           size_ratio=result["size_ratio"], perplexity_delta=result["perplexity_delta"],
                           speedup=result["speedup"])
    return dg.Output(value, metadata={**_metadata(result, table, out_dir, exported_model),
                                      "method": config.method, "requested_sparsity": config.sparsity,
                                      "weight_sparsity": dg.MetadataValue.float(info["weight_sparsity"]),
                                      "nonzero_parameters": info["nonzero_parameters"]})


@dg.asset(group_name="optimization", kinds={"deepspeed", "pytorch", "mlflow"})
def distilled_model(context: dg.AssetExecutionContext, config: DistillConfig, exported_model: ExportedModel,
                    eval_report: dict, token_shards: ShardSet, tokenizer: TokenizerArtifact,
                    settings: SettingsResource, tracking: TrackingResource) -> dg.Output[OptimizedModel]:
    """A smaller student trained on the exported model's soft targets (DeepSpeed under torchrun), vs the teacher."""
    from transformers import AutoModelForCausalLM

    from llm_assets.training.assets import run_training

    student = distill.student_spec(exported_model.path, config.n_layer, config.n_embd, config.n_head,
                                   name=f"{exported_model.registered_name}-student")
    knobs = config.model_dump(exclude={"resume", "perplexity_sequences", "speed_new_tokens"})
    digest = hashlib.sha256(json.dumps([student, knobs, token_shards.manifest_sha256], sort_keys=True).encode())
    run_name = f"distill-{exported_model.registered_name}-v{exported_model.version}-{digest.hexdigest()[:8]}"
    ckpt_dir = settings.path("checkpoints", run_name)
    if not config.resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run_cfg = launcher.RunConfig(
        run_name=run_name, checkpoint_dir=str(ckpt_dir), shard_dir=local_shards(token_shards, settings),
        tokenizer_dir=tokenizer.path,
        model=student, teacher_dir=exported_model.path, distill_temperature=config.temperature,
        distill_alpha=config.alpha, nproc=config.nproc, zero_stage=config.zero_stage,
        micro_batch_size=config.micro_batch_size, max_steps=config.max_steps, lr=config.lr,
        warmup_steps=config.warmup_steps, log_every=config.log_every, save_every=config.max_steps,
        seed=config.seed, mlflow_tracking_uri=tracking.tracking_uri)
    launcher.validate(run_cfg)

    client = tracking.client()
    finished = tracking_utils.finished_run(client, ckpt_dir, config.max_steps) if config.resume else None
    if finished is not None:
        run_id, train_result = finished
        context.log.info(f"{run_name} already distilled (MLflow run {run_id}); reusing it")
    else:
        tags = {"teacher": f"{exported_model.registered_name} v{exported_model.version}",
                "teacher_mlflow_run_id": exported_model.mlflow_run_id, "data_commit": token_shards.data_commit,
                "dagster_run_id": context.run_id, "method": "distillation"}
        run_id = tracking_utils.start_or_resume_run(tracking, client, ckpt_dir, run_name, tags, context.log.info)
        run_cfg.mlflow_run_id = run_id
        tracking_utils.log_params(client, run_id, run_cfg.params())
        train_result = run_training(context, run_cfg, ckpt_dir, settings, tracking, client)

    out_dir = export.copy_model(train_result["model_dir"], settings.dir(
        "models", exported_model.registered_name, f"v{exported_model.version}") / "distilled")
    result, table = _score(config, exported_model.path, AutoModelForCausalLM.from_pretrained(out_dir).eval(),
                           out_dir, local_shards(token_shards, settings), "distilled")
    context.log.info(f"student {result['parameters']:,} vs teacher {result['original_parameters']:,} parameters, "
                     f"x{result['speedup']:.2f} tokens/s, perplexity {result['original_perplexity']:.2f} -> "
                     f"{result['perplexity']:.2f}")
    value = OptimizedModel(path=str(out_dir), source=exported_model, method="distilled",
                           size_ratio=result["size_ratio"], perplexity_delta=result["perplexity_delta"],
                           speedup=result["speedup"])
    return dg.Output(value, metadata={
        **_metadata(result, table, out_dir, exported_model),
        "student": dg.MetadataValue.json(student),
        "final_loss": dg.MetadataValue.float(float(train_result["final_loss"])),
        "steps": train_result["steps"],
        "temperature": config.temperature,
        "alpha": config.alpha,
        "mlflow_run_id": run_id,
        "mlflow_run": dg.MetadataValue.url(tracking.run_url(run_id)),
    })
