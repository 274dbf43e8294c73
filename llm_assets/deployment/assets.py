"""Deployment stage: an int8 copy of the gated model, and the model served behind the gateway."""

# No `from __future__ import annotations`: Dagster 1.13 reads the config and resource
# parameters' annotations as objects, and string annotations break its config inference.

import dagster as dg

from llm_assets.artifacts import Endpoint, ExportedModel, QuantizedModel, ShardSet
from llm_assets.deployment import quantize
from resources.serving import ServingResource
from resources.settings import SettingsResource
from resources.tracking import TrackingResource


class QuantizeConfig(dg.Config):
    """Used by: quantized_model."""

    perplexity_sequences: int = 16
    """Validation sequences on which float and int8 perplexity are compared."""
    seed: int = 0


class EndpointConfig(dg.Config):
    """Used by: endpoint."""

    model_name: str = ""
    """The public model name clients send; empty: the registered model name."""
    smoke_prompt: str = "Hello! What can you do?"


@dg.asset(group_name="deployment", kinds={"pytorch"})
def quantized_model(context: dg.AssetExecutionContext, config: QuantizeConfig, exported_model: ExportedModel,
                    eval_report: dict, token_shards: ShardSet,
                    settings: SettingsResource) -> dg.Output[QuantizedModel]:
    """int8 copy of the exported model (PyTorch dynamic quantization), with its size and perplexity change."""
    from llm_assets.evaluation.metrics import sample_rows
    from llm_assets.tokens.shards import read_split

    out_dir = settings.dir("models", exported_model.registered_name, f"v{exported_model.version}", "int8")
    info = quantize.quantize_model_dir(exported_model.path, out_dir)
    sequences = sample_rows(read_split(token_shards.path, "validation"), config.perplexity_sequences, config.seed)
    ppl_fp32, ppl_int8 = quantize.compare_perplexity(exported_model.path, out_dir, sequences)
    context.log.info(f"int8 model {info['int8_bytes']} bytes vs {info['fp32_bytes']} fp32 "
                     f"(x{info['size_ratio']:.2f}); perplexity {ppl_fp32:.2f} -> {ppl_int8:.2f}")
    value = QuantizedModel(path=str(out_dir), source=exported_model, size_ratio=info["size_ratio"],
                           perplexity_delta=ppl_int8 - ppl_fp32)
    return dg.Output(value, metadata={
        "model_dir": dg.MetadataValue.path(str(out_dir)),
        "fp32_bytes": info["fp32_bytes"],
        "int8_bytes": info["int8_bytes"],
        "size_ratio": dg.MetadataValue.float(info["size_ratio"]),
        "perplexity_fp32": dg.MetadataValue.float(ppl_fp32),
        "perplexity_int8": dg.MetadataValue.float(ppl_int8),
        "perplexity_delta": dg.MetadataValue.float(ppl_int8 - ppl_fp32),
        "perplexity_sequences": len(sequences),
        "eval_perplexity": dg.MetadataValue.float(float(eval_report.get("perplexity", float("nan")))),
        "method": info["method"],
        "model_version": exported_model.version,
    })


@dg.asset(group_name="deployment", kinds={"fastapi"})
def endpoint(context: dg.AssetExecutionContext, config: EndpointConfig, exported_model: ExportedModel,
             quantized_model: QuantizedModel, serving: ServingResource,
             tracking: TrackingResource) -> dg.Output[Endpoint]:
    """The exported model version served (OpenAI API) behind the llmops gateway; replaces the previous one
    and becomes the registered model's `promoted` version, the baseline of the next evaluation gate."""
    name = config.model_name or exported_model.registered_name
    deployment = serving.deploy(exported_model.path, name, exported_model.version, log=context.log)
    try:
        reply = serving.smoke_test(deployment, config.smoke_prompt)
    except BaseException:
        serving.stop()
        raise
    tracking.promote(exported_model.registered_name, exported_model.version)
    context.log.info(f"{name} v{exported_model.version} serves at {deployment.url} and is promoted; "
                     f"smoke reply {reply!r}")
    value = Endpoint(url=deployment.url, model=name, model_version=exported_model.version,
                     mlflow_run_id=exported_model.mlflow_run_id, data_commit=exported_model.data_commit)
    return dg.Output(value, metadata={
        "url": dg.MetadataValue.url(deployment.url),
        "model": name,
        "model_version": exported_model.version,
        "mlflow_run_id": exported_model.mlflow_run_id,
        "data_commit": exported_model.data_commit,
        "backend": serving.backend,
        "backend_url": deployment.backend_url,
        "pids": f"backend {deployment.backend_pid}, gateway {deployment.gateway_pid}",
        "smoke_prompt": config.smoke_prompt,
        "smoke_reply": reply,
        "int8_size_ratio": dg.MetadataValue.float(quantized_model.size_ratio),
    })
