"""Model servers and the gateway in front of them: started, health-checked and stopped as processes."""

from __future__ import annotations

import dagster as dg


class ServingResource(dg.ConfigurableResource):
    """OpenAI-compatible serving: `transformers serve` on CPU or `vllm serve` on GPU, behind our gateway."""

    run_dir: str
    backend: str = "transformers"
    host: str = "127.0.0.1"
    gateway_port: int = 8000
    api_key: str = ""
