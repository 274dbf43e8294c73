"""Monitoring stage: live latency, throughput and errors of the deployed endpoint."""

# No `from __future__ import annotations`: Dagster 1.13 reads the config and resource
# parameters' annotations as objects, and string annotations break its config inference.

import dagster as dg

from llm_assets.artifacts import Endpoint
from llm_assets.monitoring import load
from resources.lakehouse import LakehouseResource
from resources.serving import ServingResource
from resources.spark import SparkResource


class LoadConfig(dg.Config):
    """Used by: endpoint_metrics."""

    requests: int = 16
    concurrency: int = 4
    max_tokens: int = 16
    timeout_s: float = 120.0


@dg.asset(group_name="monitoring", kinds={"spark", "delta"})
def endpoint_metrics(context: dg.AssetExecutionContext, config: LoadConfig, endpoint: Endpoint,
                     serving: ServingResource, spark: SparkResource,
                     lakehouse: LakehouseResource) -> dg.Output[dict]:
    """Latency p50/p95, tokens/s and error rate of real chat requests to the endpoint; rows in Delta."""
    result = load.collect_endpoint_metrics(
        endpoint.url, endpoint.model, endpoint.model_version, spark.session(), lakehouse,
        requests=config.requests, concurrency=config.concurrency, max_tokens=config.max_tokens,
        api_key=serving.api_key, timeout=config.timeout_s)
    s = result.summary
    context.log.info(f"{s['requests']} requests to {endpoint.url}: p50 {s['latency_p50_ms']:.0f} ms, "
                     f"p95 {s['latency_p95_ms']:.0f} ms, {s['tokens_per_s']:.1f} tokens/s, "
                     f"error rate {s['error_rate']:.2%}")
    return dg.Output({**s, **result.gateway}, metadata={
        "latency_p50_ms": dg.MetadataValue.float(s["latency_p50_ms"]),
        "latency_p95_ms": dg.MetadataValue.float(s["latency_p95_ms"]),
        "tokens_per_s": dg.MetadataValue.float(s["tokens_per_s"]),
        "error_rate": dg.MetadataValue.float(s["error_rate"]),
        "requests": dg.MetadataValue.int(s["requests"]),
        "model_version": s["model_version"],
        **{k: dg.MetadataValue.float(v) for k, v in result.gateway.items()},
        "table": dg.MetadataValue.path(result.table_uri),
        "delta_version": dg.MetadataValue.int(result.table_version),
        "batch_id": result.batch_id,
        "endpoint": dg.MetadataValue.url(endpoint.url),
    })
