"""Training stage: the model catalog, the chosen base model, a DeepSpeed run, and the exported model."""

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import dagster as dg

from llm_assets import storage
from llm_assets.artifacts import BaseModelChoice, ExportedModel, ShardSet, TokenizerArtifact, TrainedCheckpoint
from llm_assets.tokens.assets import local_shards
from llm_assets.tokens.shards import read_manifest
from llm_assets.training import catalog, checkpoint_sync, checkpoints, export, feedback, launcher, tracking_utils
from resources.lakehouse import LakehouseResource
from resources.settings import SettingsResource
from resources.tracking import TrackingResource
from resources.training import TrainingNodesResource


class CatalogConfig(dg.Config):
    """Used by: model_catalog."""

    train_tokens: int = 2_000_000
    """Tokens the cost estimate (6·N·tokens FLOPs) assumes for every candidate (the default run: ~2M)."""


class BaseModelConfig(dg.Config):
    """Used by: base_model. The largest candidate within license, size and budget, unless named."""

    name: str = ""
    """Pick this catalog entry (size and budget are then not enforced; the license is)."""
    local_path: str = ""
    """A Hugging Face model directory on disk to fine-tune instead of a catalog entry."""
    license_allow: list[str] = ["mit", "apache-2.0"]
    max_parameters: int = 5_000_000
    max_cpu_hours: float = 0.1


class TrainingConfig(dg.Config):
    """Used by: trained_checkpoint. Defaults train tiny-gpt2 in about two minutes on 2 cores (loss ~4.8).

    Pre-training or fine-tuning follows base_model: a catalog model built from its config trains from
    scratch; a local_path model is fine-tuned, in full or (method="lora") through LoRA adapters.
    `init_from` fine-tunes another model directory instead (the feedback sensor names the promoted model's).
    Good-feedback examples join the token shards when `feedback_examples` is on and the table has rows.
    """

    nproc: int = 2
    """Processes per node (the node topology comes from the training_nodes resource)."""
    method: str = "full"
    """"full" or "lora" (peft adapters on a frozen local_path base; merged into the exported model)."""
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = []
    """Empty: peft's default modules for the model type."""
    precision: str = "fp32"
    """"bf16" where the device has it; "fp16" on GPUs only."""
    activation_checkpointing: bool = False
    zero_stage: int = 2
    """0, 1, 2 or 3."""
    micro_batch_size: int = 8
    grad_accum_steps: int = 1
    max_steps: int = 1000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    save_every: int = 250
    keep_checkpoints: int = 2
    log_every: int = 50
    seed: int = 0
    resume: bool = True
    """Continue from the newest checkpoint of an identical run (same model, shards, feedback and config)."""
    init_from: str = ""
    """A Hugging Face model directory to continue training from instead of base_model (e.g. the deployed
    model's export, models/<name>/v<version>); its vocabulary must fit the tokenizer."""
    feedback_examples: bool = True
    """Also train on the newest feedback_dataset version (or the one the run's llmops/feedback_dataset_version
    tag names), when that table exists and has rows."""
    feedback_repeat: int = 4
    """Upsampling: each feedback example is packed this many times (a few hundred examples beside a corpus)."""


_NOT_RUN_CONFIG = {"resume", "init_from", "feedback_examples", "feedback_repeat"}  # TrainingConfig-only knobs


class ExportConfig(dg.Config):
    """Used by: exported_model."""

    registered_name: str = "llmops-demo"
    prompt: str = "The"
    max_new_tokens: int = 8
    restore_version: str = ""
    """A registered version to make current again instead of exporting trained_checkpoint (the
    continuous_evaluation schedule names the promoted one, so evaluation follows rollbacks and rejected canaries)."""


@dg.asset(group_name="training", kinds={"yaml"})
def model_catalog(context: dg.AssetExecutionContext, config: CatalogConfig) -> dg.Output[list[dict]]:
    """Base-model candidates with parameter counts, training cost and serving memory."""
    candidates = catalog.build_catalog(config.train_tokens)
    context.log.info(f"{len(candidates)} candidates from {catalog.CATALOG_PATH}")
    return dg.Output(candidates, metadata={
        "candidates": len(candidates),
        "catalog": dg.MetadataValue.md(catalog.catalog_markdown(candidates)),
        "train_tokens_assumed": config.train_tokens,
    })


@dg.asset(group_name="training")
def base_model(context: dg.AssetExecutionContext, config: BaseModelConfig,
               model_catalog: list[dict]) -> dg.Output[BaseModelChoice]:
    """The model to train: a catalog candidate picked by license, size and budget, or a local directory."""
    if config.local_path:
        spec = catalog.local_model_spec(config.local_path)
        reasons = [f"{spec['name']}: local_path {spec['local_path']} given; catalog rule not applied "
                   "(license not checked for local directories)"]
    else:
        spec, reasons = catalog.select_base_model(
            model_catalog, name=config.name, license_allow=config.license_allow,
            max_parameters=config.max_parameters, max_cpu_hours=config.max_cpu_hours)
    for r in reasons:
        context.log.info(r)
    return dg.Output(BaseModelChoice(name=spec["name"], spec=spec, reasons=reasons), metadata={
        "name": spec["name"],
        "parameters": spec.get("parameters") or 0,
        "license": spec.get("license", "unknown"),
        "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in reasons)),
    })


def _run_name(base: BaseModelChoice, shards: ShardSet, config: TrainingConfig,
              examples: feedback.FeedbackExamples | None) -> str:
    """Stable for the same model, shards, feedback examples and config, so a relaunch finds its checkpoints."""
    knobs = config.model_dump(exclude={"resume"})
    inputs = [base.spec.get("config"), base.spec.get("local_path"), knobs]
    if examples is not None:
        inputs.append(examples.sha256)
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()
    return f"{base.name}-{shards.manifest_sha256[:8]}-{digest[:8]}"


def feedback_for_run(context: dg.AssetExecutionContext, config: TrainingConfig, lakehouse: LakehouseResource,
                     tokenizer: TokenizerArtifact) -> tuple[feedback.FeedbackExamples | None, str]:
    """The feedback examples this run mixes in (None when off, absent or empty) and why, for the log."""
    if not config.feedback_examples:
        return None, "feedback examples off (feedback_examples=False)"
    if config.feedback_repeat < 1:
        raise ValueError(f"feedback_repeat={config.feedback_repeat} must be at least 1")
    pinned = context.run.tags.get(feedback.VERSION_TAG)
    version, rows = feedback.read_examples(lakehouse, int(pinned) if pinned else None)
    if version is None:
        return None, f"no {feedback.TABLE} table at {lakehouse.uri(feedback.TABLE)}: training without feedback"
    if rows.empty:
        return None, f"{feedback.TABLE}@{version} has no examples: training without feedback"
    texts = feedback.format_examples(rows, tokenizer.path, feedback.system_messages(lakehouse.root))
    return (feedback.FeedbackExamples(version, lakehouse.uri(feedback.TABLE), texts),
            f"{len(texts)} feedback examples from {feedback.TABLE}@{version}"
            + (f" ({feedback.VERSION_TAG}={pinned})" if pinned else " (the newest version)"))


def _pack_feedback(context: dg.AssetExecutionContext, config: TrainingConfig, examples: feedback.FeedbackExamples,
                   shard_dir: str, tokenizer: TokenizerArtifact, out_dir: Path) -> tuple[list[str], int]:
    """The feedback shard set in the run's directory, packed like `shard_dir`'s: ([its path] or [] when the
    examples fill no sequence, its sequence count)."""
    manifest = read_manifest(shard_dir)
    packed = feedback.pack_examples(
        examples.texts, tokenizer.path, out_dir, eos_token=tokenizer.eos_token, seq_len=manifest["seq_len"],
        sequences_per_shard=manifest["sequences_per_shard"], repeat=config.feedback_repeat, seed=config.seed,
        header={"data_commit": f"{feedback.TABLE}@{examples.version}", "table": examples.uri})
    sequences = sum(e["sequences"] for e in packed.manifest["splits"]["train"])
    context.log.info(f"packed {len(examples.texts)} feedback examples x{config.feedback_repeat} into {sequences} "
                     f"sequences of {manifest['seq_len']} -> {packed.path}")
    if not sequences:
        context.log.warning(f"the feedback examples fill no sequence of {manifest['seq_len']} tokens; training "
                            "without them (raise feedback_repeat)")
        return [], 0
    return [str(packed.path)], sequences


def _fetch_remote_checkpoint(context: dg.AssetExecutionContext, settings: SettingsResource, remote: str,
                             ckpt_dir: Path) -> None:
    """With no sound checkpoint here (a new machine), bring back the newest sound one from object storage."""
    if checkpoints.newest_valid(ckpt_dir)[0] is not None:
        return
    tag, skipped = checkpoint_sync.fetch_newest(settings.object_store().filesystem(), storage.bucket_path(remote),
                                                ckpt_dir)
    for why in skipped:
        context.log.warning(f"skipping remote checkpoint: {why}")
    if tag is not None:
        context.log.info(f"fetched checkpoint {tag} from {remote}: the run resumes from it")


def run_training(context: dg.AssetExecutionContext, run_cfg: launcher.RunConfig, ckpt_dir: Path,
                 settings: SettingsResource, tracking: TrackingResource, client, publish_to: str | None = None) -> dict:
    """Launch torchrun on run.json, stream its log, and close the MLflow run as FINISHED or FAILED.

    With `publish_to` (an s3:// directory), each checkpoint is published there as soon as it is sealed.
    """
    config_path = run_cfg.write(ckpt_dir / "run.json")
    env = launcher.training_env(
        torch_extensions_dir=settings.cache("torch_extensions"), tmp_dir=settings.dir("tmp", "training"),
        cache_dir=settings.cache("xdg"), tracking_uri=tracking.tracking_uri)
    cmd = launcher.command_for(run_cfg, config_path)
    context.log.info(f"launching {' '.join(cmd)}")
    publisher = (checkpoint_sync.Publisher(ckpt_dir, settings.object_store().filesystem(),
                                           storage.bucket_path(publish_to), context.log.info)
                 if publish_to else contextlib.nullcontext())
    try:
        with publisher:
            launcher.run(cmd, env, on_line=context.log.info)
    except BaseException:
        client.set_terminated(run_cfg.mlflow_run_id, "FAILED")
        raise
    result = json.loads((ckpt_dir / "result.json").read_text())
    if result["final_loss"] is not None:
        client.log_metric(run_cfg.mlflow_run_id, "final_loss", result["final_loss"], step=result["steps"])
    client.set_terminated(run_cfg.mlflow_run_id, "FINISHED")
    return result


@dg.asset(group_name="training", kinds={"deepspeed", "pytorch", "mlflow"})
def trained_checkpoint(context: dg.AssetExecutionContext, config: TrainingConfig, token_shards: ShardSet,
                       base_model: BaseModelChoice, tokenizer: TokenizerArtifact,
                       settings: SettingsResource, tracking: TrackingResource, lakehouse: LakehouseResource,
                       training_nodes: TrainingNodesResource) -> dg.Output[TrainedCheckpoint]:
    """The base model trained (from scratch, fine-tuned or LoRA) on the token shards and good-feedback examples
    with DeepSpeed under torchrun."""
    examples, why = feedback_for_run(context, config, lakehouse, tokenizer)
    context.log.info(why)
    run_name = _run_name(base_model, token_shards, config, examples)
    ckpt_dir = settings.path("checkpoints", run_name)
    if not config.resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    shard_dir = local_shards(token_shards, settings)
    extra_shard_dirs, feedback_sequences = [], 0
    if examples is not None:
        extra_shard_dirs, feedback_sequences = _pack_feedback(context, config, examples, shard_dir, tokenizer,
                                                              ckpt_dir / "feedback_shards")
    if config.init_from:
        model = {"name": base_model.name, "local_path": config.init_from}
        context.log.info(f"fine-tuning {config.init_from} (init_from) instead of base_model {base_model.name}")
    else:
        model = {k: base_model.spec[k] for k in ("name", "model_type", "config", "local_path") if k in base_model.spec}
    run_cfg = launcher.RunConfig(
        run_name=run_name, checkpoint_dir=str(ckpt_dir), shard_dir=shard_dir, extra_shard_dirs=extra_shard_dirs,
        tokenizer_dir=tokenizer.path, model=model, mlflow_tracking_uri=tracking.tracking_uri,
        nnodes=training_nodes.nnodes, node_rank=training_nodes.node_rank, rdzv_endpoint=training_nodes.rdzv_endpoint,
        **config.model_dump(exclude=_NOT_RUN_CONFIG))
    launcher.validate(run_cfg)  # bad settings and corrupt shards fail here, before torchrun starts

    feedback_record = {"feedback_dataset_version": str(examples.version) if examples is not None else "none",
                       "feedback_examples": str(len(examples.texts) if examples is not None else 0)}
    client = tracking.client()
    git = tracking_utils.git_state(launcher.REPO_ROOT)
    remote = settings.remote("checkpoints", run_name)  # None without an object-storage home
    finished = tracking_utils.finished_run(client, ckpt_dir, config.max_steps) if config.resume else None
    if finished is not None:
        run_id, result = finished
        context.log.info(f"{run_name} already trained to step {result['steps']} (MLflow run {run_id}); "
                         "reusing it (set resume=False to train again)")
    else:
        tags = {"git_commit": git["commit"], "git_dirty": git["dirty"], "mlflow.source.git.commit": git["commit"],
                "data_commit": token_shards.data_commit, "shards_manifest_sha256": token_shards.manifest_sha256,
                "tokenizer_sha256": tokenizer.sha256, "dagster_run_id": context.run_id,
                "base_model": base_model.name, **feedback_record,
                **({"init_from": config.init_from} if config.init_from else {})}
        if remote and config.resume:
            _fetch_remote_checkpoint(context, settings, remote, ckpt_dir)
        run_id = tracking_utils.start_or_resume_run(tracking, client, ckpt_dir, run_name, tags, context.log.info)
        run_cfg.mlflow_run_id = run_id
        tracking_utils.log_params(client, run_id, {**run_cfg.params(), **feedback_record})
        # node 0 holds global rank 0, which seals the checkpoints
        result = run_training(context, run_cfg, ckpt_dir, settings, tracking, client,
                            remote if training_nodes.node_rank == 0 else None)

    plot = tracking_utils.loss_plot(client, run_id, settings.path("reports", f"{run_name}-loss.png"))
    metadata = {
        "final_loss": result["final_loss"] if result["final_loss"] is not None else float("nan"),
        "steps": result["steps"],
        "tokens_seen": result["tokens_seen"],
        "tokens_per_s": result["tokens_per_s"] or 0.0,
        "parameters": result["parameters"],
        "trainable_parameters": result.get("trainable_parameters", result["parameters"]),
        "method": config.method,
        "mlflow_run_id": run_id,
        "mlflow_run": dg.MetadataValue.url(tracking.run_url(run_id)),
        "checkpoint_dir": dg.MetadataValue.path(str(ckpt_dir)),
        **({"checkpoints_remote": remote} if remote else {}),
        "git_commit": client.get_run(run_id).data.tags.get("git_commit", git["commit"]),
        "data_commit": token_shards.data_commit,
        "feedback_dataset_version": examples.version if examples is not None else -1,
        "feedback_examples": len(examples.texts) if examples is not None else 0,
        "feedback_sequences": feedback_sequences,
        "feedback_sequences_trained": result.get("extra_sequences_seen", 0),
        "feedback": why,
        **({"init_from": dg.MetadataValue.path(config.init_from)} if config.init_from else {}),
    }
    if plot is not None:
        client.log_artifact(run_id, str(plot))
        metadata["loss_plot"] = dg.MetadataValue.path(str(plot))
    checkpoint = TrainedCheckpoint(checkpoint_dir=str(ckpt_dir), model_dir=result["model_dir"], mlflow_run_id=run_id,
                                   data_commit=token_shards.data_commit, steps=result["steps"],
                                   final_loss=result["final_loss"])
    return dg.Output(checkpoint, metadata=metadata)


@dg.asset(group_name="training", kinds={"huggingface", "mlflow"})
def exported_model(context: dg.AssetExecutionContext, config: ExportConfig, trained_checkpoint: TrainedCheckpoint,
                   settings: SettingsResource, tracking: TrackingResource) -> dg.Output[ExportedModel]:
    """The trained model as a Hugging Face directory, verified to load and generate, registered in MLflow; or,
    with `restore_version`, that registered version again."""
    store = settings.dir("models", config.registered_name)
    if config.restore_version:
        return _restore_registered(context, config, store, settings, tracking)
    staging = export.copy_model(trained_checkpoint.model_dir, store / f".staging-{trained_checkpoint.mlflow_run_id}")
    try:
        sample = export.smoke_test(staging, config.prompt, config.max_new_tokens)
        version = tracking.register_model(config.registered_name, str(staging), trained_checkpoint.mlflow_run_id)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    final = store / f"v{version}"
    shutil.rmtree(final, ignore_errors=True)
    staging.rename(final)
    context.log.info(f"registered {config.registered_name} v{version} at {final}: "
                     f"{sample['prompt']!r} -> {sample['completion']!r}")
    model = ExportedModel(path=str(final), registered_name=config.registered_name, version=str(version),
                          mlflow_run_id=trained_checkpoint.mlflow_run_id, data_commit=trained_checkpoint.data_commit)
    return dg.Output(model, metadata={
        "model_dir": dg.MetadataValue.path(str(final)),
        "registered_name": config.registered_name,
        "version": str(version),
        "sample": dg.MetadataValue.md(f"**{sample['prompt']}**{sample['completion']}"),
        "parameters": sample["parameters"],
        "size_mb": round(sum(f.stat().st_size for f in final.rglob("*") if f.is_file()) / 1e6, 3),
        "mlflow_run_id": trained_checkpoint.mlflow_run_id,
        "data_commit": trained_checkpoint.data_commit,
    })


def _restore_registered(context: dg.AssetExecutionContext, config: ExportConfig, store: Path,
                        settings: SettingsResource, tracking: TrackingResource) -> dg.Output[ExportedModel]:
    """Registered version `restore_version` as the current exported model: its export under `store` when it is
    still there, else its MLflow artifact; run id and data commit from its training run."""
    name, version = config.registered_name, config.restore_version
    client = tracking.client()
    registered = client.get_model_version(name, version)
    local = store / f"v{version}"
    path = str(local) if (local / "config.json").exists() else tracking.model_dir(
        name, version, settings.path("models", "registry"))
    data_commit = client.get_run(registered.run_id).data.tags.get("data_commit", "") if registered.run_id else ""
    context.log.info(f"restored {name} v{version} from the registry: {path}")
    model = ExportedModel(path=path, registered_name=name, version=str(version), mlflow_run_id=registered.run_id or "",
                          data_commit=data_commit)
    return dg.Output(model, metadata={"model_dir": dg.MetadataValue.path(path), "registered_name": name,
                                      "version": str(version), "restored": True,
                                      "mlflow_run_id": model.mlflow_run_id, "data_commit": data_commit})
