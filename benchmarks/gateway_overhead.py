"""Gateway overhead: p50 latency of a request through the llmops gateway minus the same request straight to
the backend, in one run.

`ServingResource(...).deploy(model_dir, name, version)` starts the backend (`transformers serve
--continuous-batching`) and the gateway. Then the same short chat completions (`max_tokens` 1, so the
model's work is small and the gateway's share shows) go alternately to the gateway (by public model
name) and directly to the backend's URL (by its own model id), one at a time over keep-alive
connections, after a warm-up of each. The backend URL comes from the deployment record, or from
the gateway's route table (`<run_dir>/routes.json`) where the deployment no longer names a single
backend. Goal (issue 7): ≤ 2 ms added at p50.

The model: the hermetic tiny GPT-2 of the tests (`tests/tiny_model.py`). The backend runs with one OpenMP
thread (`OMP_NUM_THREADS=1` unless set): with torch's default of a thread per core, on this loaded 2-core
machine its p50 swung between 4 and 50 ms from run to run, and the difference of two p50s was noise
(-0.2 to +11 ms for the same gateway); with one thread it answers in about 4 ms.

    .venv/bin/python benchmarks/gateway_overhead.py       # about a minute here

Prints p50/p90 of each side, `overhead_ms <gateway p50 − direct p50>`, then `ratio <gateway p50 ÷ direct p50>` last.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
sys.path.insert(0, str(HERE.parent))  # the repository root, for tests.tiny_model

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402


def backend_of(deployment, run_dir: Path) -> tuple[str, str]:
    """(backend URL, backend model id) of the deployment's single version."""
    if getattr(deployment, "backend_url", None):
        return deployment.backend_url, deployment.backend_model
    routes = json.loads((run_dir / "routes.json").read_text())
    model = next(iter(routes["models"].values()))
    version = next(iter(model["versions"].values()))
    return version["replicas"][0], version["backend_model"]


def timed(client: httpx.Client, url: str, model: str, prompt: str) -> float:
    start = time.perf_counter()
    resp = client.post(f"{url}/v1/chat/completions", json={
        "model": model, "max_tokens": 1, "messages": [{"role": "user", "content": prompt}]})
    elapsed = time.perf_counter() - start
    if resp.status_code != 200:
        raise RuntimeError(f"{url} answered HTTP {resp.status_code}: {resp.text[:300]}")
    return elapsed


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200, help="per side")
    parser.add_argument("--warmup", type=int, default=10)
    args = parser.parse_args()

    from resources.serving import ServingResource
    from tests.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", train_steps=60)
        run_dir = Path(tmp) / "run"
        serving = ServingResource(run_dir=str(run_dir), gateway_port=0)
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the backend (see the docstring)
        deployment = serving.deploy(str(model_dir), "bench", "1")
        try:
            backend_url, backend_model = backend_of(deployment, run_dir)
            sides = {"gateway": (deployment.url, "bench"), "direct": (backend_url, backend_model)}
            times: dict[str, list[float]] = {side: [] for side in sides}
            with httpx.Client(timeout=60) as client:
                for i in range(args.warmup + args.requests):
                    order = list(sides) if i % 2 == 0 else list(reversed(sides))  # neither side always goes first
                    for side in order:
                        url, model = sides[side]
                        t = timed(client, url, model, f"hello {i % 7}")
                        if i >= args.warmup:
                            times[side].append(t)
        finally:
            serving.stop()
    p50 = {side: statistics.median(t) * 1000 for side, t in times.items()}
    print(f"model: tests/tiny_model.py GPT-2; {args.requests} chat requests a side, max_tokens 1, alternating")
    print(f"{'side':<9}{'p50 ms':>9}{'p90 ms':>9}{'mean ms':>9}")
    for side, t in times.items():
        print(f"{side:<9}{p50[side]:>9.2f}{percentile(t, 90) * 1000:>9.2f}{statistics.mean(t) * 1000:>9.2f}")
    print(f"overhead_ms {p50['gateway'] - p50['direct']:.2f}")
    print(f"ratio {p50['gateway'] / p50['direct']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
