"""Serving throughput: 16 concurrent clients through our serving path against the same requests one at a time.

Our serving path is what `endpoint` deploys: `ServingResource(...).deploy(model_dir, name, version)` starts
the backend (`transformers serve --continuous-batching` on CPU) and the llmops gateway in front of it.
Both sides send the same 64 chat completions (distinct prompts, `max_tokens` 32) to the gateway in one
run: the baseline one request at a time, the candidate from 16 client threads at once, so the backend
can batch them. Tokens/s is the sum of the responses' `usage.completion_tokens` over the wall time of
all requests. Sequential and concurrent rounds alternate (`--rounds` each) so drifting load on the
machine weighs on both; each side's best round counts.

The model: the hermetic tiny GPT-2 of the tests (`tests/tiny_model.py`: 1 layer × 32 wide, BPE vocab
320, chat template), trained 60 steps. Goal (issue 7): ratio ≥ 4 on 2 cores.

    .venv/bin/python benchmarks/serving.py          # about 2 minutes here

Prints a table (side, requests, completion tokens, seconds, tokens/s, p50 latency), then
`ratio <concurrent tokens/s ÷ sequential tokens/s>` last.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
sys.path.insert(0, str(HERE.parent))  # the repository root, for tests.tiny_model

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import httpx  # noqa: E402

TOPICS = ["the fox", "a language model", "the gateway", "token shards", "the lazy dog", "monitoring",
          "a cleaned corpus", "the sun"]


def prompts(n: int) -> list[str]:
    return [f"Tell me about {TOPICS[i % len(TOPICS)]} (request {i})." for i in range(n)]


def ask(client: httpx.Client, url: str, model: str, prompt: str, max_tokens: int) -> tuple[int, float]:
    """(completion tokens, seconds) of one chat completion; raises on an HTTP error."""
    start = time.perf_counter()
    resp = client.post(f"{url}/v1/chat/completions", json={
        "model": model, "max_tokens": max_tokens, "messages": [{"role": "user", "content": prompt}]})
    if resp.status_code != 200:
        raise RuntimeError(f"{url} answered HTTP {resp.status_code}: {resp.text[:300]}")
    return resp.json()["usage"]["completion_tokens"], time.perf_counter() - start


def run_side(url: str, model: str, batch: list[str], clients: int, max_tokens: int) -> dict:
    """All of `batch` through `clients` threads (1: one at a time); tokens, wall seconds, latencies."""
    with httpx.Client(timeout=300, limits=httpx.Limits(max_connections=clients)) as client:
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda p: ask(client, url, model, p, max_tokens), batch))
        wall = time.perf_counter() - start
    tokens = sum(t for t, _ in results)
    return {"requests": len(batch), "tokens": tokens, "seconds": wall, "tokens_per_s": tokens / wall,
            "p50_s": statistics.median(s for _, s in results)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from resources.serving import ServingResource
    from tests.tiny_model import build_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        model_dir = build_tiny_model(Path(tmp) / "model", train_steps=60)
        serving = ServingResource(run_dir=str(Path(tmp) / "run"), gateway_port=0)
        deployment = serving.deploy(str(model_dir), "bench", "1")
        try:
            batch = prompts(args.requests)
            run_side(deployment.url, "bench", batch[:args.clients], args.clients, args.max_tokens)  # warm-up
            best: dict[str, dict] = {}
            for _ in range(args.rounds):
                for side, clients in (("sequential", 1), ("concurrent", args.clients)):
                    r = run_side(deployment.url, "bench", batch, clients, args.max_tokens)
                    if side not in best or r["tokens_per_s"] > best[side]["tokens_per_s"]:
                        best[side] = r
        finally:
            serving.stop()
    print(f"model: tests/tiny_model.py GPT-2 (1 layer x 32); {args.requests} chat requests, max_tokens "
          f"{args.max_tokens}; concurrent = {args.clients} clients; best of {args.rounds} rounds")
    print(f"{'side':<12}{'requests':>9}{'tokens':>8}{'seconds':>9}{'tokens/s':>10}{'p50 s':>8}")
    for side, r in best.items():
        print(f"{side:<12}{r['requests']:>9}{r['tokens']:>8}{r['seconds']:>9.2f}{r['tokens_per_s']:>10.1f}"
              f"{r['p50_s']:>8.3f}")
    print(f"ratio {best['concurrent']['tokens_per_s'] / best['sequential']['tokens_per_s']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
