"""The outside systems llmops talks to, each an embedded default or a scale-out target chosen by settings."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from resources.lakehouse import LakehouseResource
from resources.serving import ServingResource
from resources.settings import SettingsResource, home_from_env
from resources.spark import SparkResource
from resources.tracking import TrackingResource
from resources.training import TrainingNodesResource
from resources.versioning import LakeFSVersioning, LocalVersioning


def spark_conf(setting: str) -> dict[str, str]:
    """`key=value,key=value` (e.g. `spark.executor.memory=4g,spark.executor.cores=2`) as a dict."""
    pairs = [p.strip() for p in setting.split(",") if p.strip()]
    bad = [p for p in pairs if "=" not in p]
    if bad:
        raise ValueError(f"LLMOPS_SPARK_CONF: expected key=value pairs separated by commas, got {bad}")
    return dict(p.split("=", 1) for p in pairs)


def object_storage(env: dict[str, str]) -> tuple[str, dict]:
    """LLMOPS_STORAGE_URI (`s3://bucket/prefix`, or empty for local) and the S3 settings of the resources
    that use it: endpoint and region from AWS_ENDPOINT_URL / AWS_REGION, keys as `dg.EnvVar`s."""
    uri = env.get("LLMOPS_STORAGE_URI", "")
    if not uri:
        return "", {}
    if not uri.startswith("s3://") or len(uri) <= len("s3://"):
        raise ValueError(f"LLMOPS_STORAGE_URI: expected s3://bucket/prefix, got {uri!r}")
    return uri, {"s3_endpoint_url": env.get("AWS_ENDPOINT_URL", ""), "s3_region": env.get("AWS_REGION", "us-east-1"),
                 "s3_access_key_id": dg.EnvVar("AWS_ACCESS_KEY_ID"),
                 "s3_secret_access_key": dg.EnvVar("AWS_SECRET_ACCESS_KEY")}


def build_resources(env: dict[str, str] | None = None) -> dict:
    """All resources, configured from environment variables (see README, "Settings")."""
    env = dict(os.environ if env is None else env)
    home = Path(env.get("LLMOPS_HOME") or home_from_env()).resolve()
    if env.get("LAKEFS_ENDPOINT"):
        versioning = LakeFSVersioning(
            endpoint=dg.EnvVar("LAKEFS_ENDPOINT"),
            access_key_id=dg.EnvVar("LAKEFS_ACCESS_KEY_ID"),
            secret_access_key=dg.EnvVar("LAKEFS_SECRET_ACCESS_KEY"),
            repository=env.get("LAKEFS_REPOSITORY", "llmops"),
            branch=env.get("LLMOPS_DATA_BRANCH", "main"),
        )
    else:
        versioning = LocalVersioning(root=str(home / "lakehouse" / "_versions"),
                                     branch=env.get("LLMOPS_DATA_BRANCH", "main"))
    storage_uri, s3 = object_storage(env)
    return {
        "settings": SettingsResource(home=str(home), source=env.get("LLMOPS_SOURCE", ""),
                                     cache_dir=env.get("LLMOPS_CACHE", ""), storage_uri=storage_uri, **s3),
        "spark": SparkResource(master=env.get("SPARK_MASTER", "local[*]"),
                               conf={**SparkResource().conf, **spark_conf(env.get("LLMOPS_SPARK_CONF", ""))},
                               scratch_dir=str(home / "tmp" / "spark"),
                               class_data_sharing=env.get("LLMOPS_SPARK_CDS", "1") != "0"),
        "lakehouse": LakehouseResource(root=f"{storage_uri.rstrip('/')}/lakehouse" if storage_uri
                                       else str(home / "lakehouse"),
                                       staging_dir=str(home / "tmp" / "lakehouse"), **s3),
        "versioning": versioning,
        "tracking": TrackingResource(
            tracking_uri=env.get("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}"),
            artifact_root=str(home / "mlruns"),
        ),
        "serving": ServingResource(
            run_dir=str(home / "run"),
            backend=env.get("LLMOPS_SERVING_BACKEND", "transformers"),
            host=env.get("LLMOPS_HOST", "127.0.0.1"),
            gateway_port=int(env.get("LLMOPS_GATEWAY_PORT", "8000")),
            api_key=env.get("LLMOPS_API_KEY", ""),
            admin_key=env.get("LLMOPS_ADMIN_KEY", ""),
            replicas=int(env.get("LLMOPS_REPLICAS", "1")),
            backend_threads=int(env.get("LLMOPS_BACKEND_THREADS", "1")),
            vllm_quantization=env.get("LLMOPS_VLLM_QUANTIZATION", ""),
        ),
        "training_nodes": TrainingNodesResource(
            nnodes=int(env.get("LLMOPS_TRAIN_NNODES", "1")),
            node_rank=int(env.get("LLMOPS_TRAIN_NODE_RANK", "0")),
            rdzv_endpoint=env.get("LLMOPS_TRAIN_RDZV_ENDPOINT", ""),
        ),
        "io_manager": dg.FilesystemIOManager(base_dir=str(home / "dagster" / "storage")),
    }
