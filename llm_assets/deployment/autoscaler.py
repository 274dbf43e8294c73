"""The local autoscaler: adds and removes model-server replicas of each served version within [min, max].

Every `--interval` seconds it reads the gateway's /metrics and, per model version, computes the queue
depth (outstanding requests per healthy replica, from `gateway_outstanding_requests` and
`gateway_replica_up`) and the p95 latency of the requests finished since the last poll (from the
`gateway_request_latency_seconds` histogram's bucket deltas). `decide` scales up by one replica after
`--polls` consecutive polls over `--queue-high` (or over `--p95-high-ms`, when set), and down by one after
`--idle-polls` consecutive polls at or under `--queue-low`; below min or above max it corrects at once.
Replicas start and stop through `processes.Fleet` (the deployment's `serving.json` and the gateway's
admin API; the admin key comes from LLMOPS_ADMIN_KEY or `<run_dir>/admin.key`). Each decision to scale,
and each change of reason while holding, is appended with its numbers to `<run_dir>/logs/autoscaler.jsonl`.

    python -m llm_assets.deployment.autoscaler --run-dir .llmops/run --min 1 --max 3 \\
        --queue-high 2 --polls 3 --idle-polls 5 --interval 2

ServingResource.start_autoscaler runs it as a detached process beside the deployment. On Kubernetes the
HPA/KEDA manifests in infra/ do this job.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llm_assets.deployment import processes


@dataclass(frozen=True)
class Policy:
    min_replicas: int = 1
    max_replicas: int = 4
    queue_high: float = 2.0
    """Outstanding requests per healthy replica above which a version is overloaded."""
    queue_low: float = 0.5
    """... at or below which (with latency fine) it is idle."""
    p95_high_ms: float = 0.0
    """p95 latency over the last poll above which a version is overloaded; 0: not used."""
    polls: int = 3
    """Consecutive overloaded polls before scaling up."""
    idle_polls: int = 5
    """Consecutive idle polls before scaling down."""

    def __post_init__(self):
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 1 <= min_replicas <= max_replicas, got {self.min_replicas}, {self.max_replicas}")
        if self.queue_low >= self.queue_high:
            raise ValueError(f"queue_low ({self.queue_low}) must be below queue_high ({self.queue_high})")


@dataclass(frozen=True)
class Observation:
    """One version at one poll."""

    replicas: int
    healthy: int
    outstanding: float
    p95_ms: float | None = None
    """None: no request finished since the last poll."""
    requests: float = 0.0

    @property
    def queue(self) -> float:
        return self.outstanding / max(self.healthy, 1)


@dataclass(frozen=True)
class Decision:
    action: str  # "up" | "down" | "hold"
    target: int
    reason: str
    high_streak: int
    idle_streak: int


def decide(policy: Policy, obs: Observation, high_streak: int = 0, idle_streak: int = 0) -> Decision:
    """Scale one version up, down or not, given this poll and the streaks so far (returned updated)."""
    n = obs.replicas
    if n < policy.min_replicas:
        return Decision("up", n + 1, f"{n} replicas < min {policy.min_replicas}", 0, 0)
    if n > policy.max_replicas:
        return Decision("down", n - 1, f"{n} replicas > max {policy.max_replicas}", 0, 0)
    slow = policy.p95_high_ms > 0 and obs.p95_ms is not None and obs.p95_ms > policy.p95_high_ms
    busy = obs.queue > policy.queue_high
    high_streak = high_streak + 1 if busy or slow else 0
    idle_streak = idle_streak + 1 if obs.queue <= policy.queue_low and not slow else 0
    why = (f"queue {obs.queue:.2f} > {policy.queue_high}" if busy else
           f"p95 {obs.p95_ms:.0f} ms > {policy.p95_high_ms:.0f} ms" if slow else
           f"queue {obs.queue:.2f} <= {policy.queue_low}" if idle_streak else
           f"queue {obs.queue:.2f} within ({policy.queue_low}, {policy.queue_high}]")
    if high_streak >= policy.polls:
        if n < policy.max_replicas:
            return Decision("up", n + 1, f"{why} for {high_streak} polls", 0, 0)
        return Decision("hold", n, f"{why} but at max {policy.max_replicas}", high_streak, idle_streak)
    if idle_streak >= policy.idle_polls:
        if n > policy.min_replicas:
            return Decision("down", n - 1, f"{why} for {idle_streak} polls", 0, 0)
        return Decision("hold", n, f"idle at min {policy.min_replicas}", high_streak, idle_streak)
    streak = (f" ({high_streak}/{policy.polls} polls)" if high_streak else
              f" ({idle_streak}/{policy.idle_polls} polls)" if idle_streak else "")
    return Decision("hold", n, why + streak, high_streak, idle_streak)


# ---------------------------------------------------------------- reading the gateway's /metrics


@dataclass
class Snapshot:
    """Per (model, version): replica counts, outstanding requests, cumulative latency buckets."""

    replicas: dict
    healthy: dict
    outstanding: dict
    buckets: dict  # (model, version) -> {le: cumulative count}


def parse_metrics(text: str) -> Snapshot:
    snap = Snapshot(defaultdict(int), defaultdict(int), defaultdict(float), defaultdict(lambda: defaultdict(float)))
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.labels.get("model", ""), s.labels.get("version", ""))
            if s.name == "gateway_replica_up":
                snap.replicas[key] += 1
                snap.healthy[key] += int(s.value)
            elif s.name == "gateway_outstanding_requests":
                snap.outstanding[key] += s.value
            elif s.name == "gateway_request_latency_seconds_bucket":
                snap.buckets[key][float(s.labels["le"])] += s.value
    return snap


def quantile_ms(now: dict[float, float], before: dict[float, float], q: float = 0.95) -> tuple[float | None, float]:
    """The q-quantile (ms) and count of the observations between two cumulative histograms, interpolated
    within the bucket as Prometheus' histogram_quantile does; None when nothing was observed."""
    bounds = sorted(now)
    counts = [now[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return None, 0.0
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            if math.isinf(bound):
                return 1000 * prev_bound, total
            frac = (rank - prev_count) / (count - prev_count) if count > prev_count else 1.0
            return 1000 * (prev_bound + (bound - prev_bound) * frac), total
        prev_bound, prev_count = bound, count
    return 1000 * prev_bound, total


def observations(now: Snapshot, before: Snapshot | None) -> dict[tuple[str, str], Observation]:
    out = {}
    for key, n in now.replicas.items():
        p95, count = quantile_ms(now.buckets.get(key, {}), before.buckets.get(key, {}) if before else {})
        out[key] = Observation(n, now.healthy[key], now.outstanding[key], p95, count)
    return out


# ---------------------------------------------------------------- the process


def run(fleet: processes.Fleet, policy: Policy, interval: float, log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    streaks: dict[tuple[str, str], tuple[int, int]] = {}
    reasons: dict[tuple[str, str], str] = {}
    before: Snapshot | None = None
    while True:
        try:
            resp = httpx.get(f"{fleet.gateway_url}/metrics", timeout=10)
            resp.raise_for_status()
            now = parse_metrics(resp.text)
        except httpx.HTTPError as e:
            print(f"autoscaler: cannot read {fleet.gateway_url}/metrics: {e!r}", file=sys.stderr, flush=True)
            time.sleep(interval)
            continue
        for (model, version), obs in observations(now, before).items():
            d = decide(policy, obs, *streaks.get((model, version), (0, 0)))
            streaks[(model, version)] = (d.high_streak, d.idle_streak)
            record = {"timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), "model": model,
                      "version": version, "action": d.action, "target": d.target, "reason": d.reason,
                      **asdict(obs), "queue": obs.queue, "replica": "", "error": ""}
            try:
                if d.action == "up":
                    record["replica"] = fleet.add_replica(model, version)
                elif d.action == "down":
                    record["replica"] = fleet.remove_replica(model, version)
            except (RuntimeError, OSError, KeyError, httpx.HTTPError) as e:
                record["error"] = f"{type(e).__name__}: {e}"[:2000]
            if d.action != "hold" or reasons.get((model, version)) != d.reason.split(" (")[0]:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            reasons[(model, version)] = d.reason.split(" (")[0]
        before = now
        time.sleep(interval)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m llm_assets.deployment.autoscaler", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="the deployment's run directory (serving.json, logs/)")
    parser.add_argument("--min", type=int, default=1, dest="min_replicas")
    parser.add_argument("--max", type=int, default=4, dest="max_replicas")
    parser.add_argument("--queue-high", type=float, default=2.0)
    parser.add_argument("--queue-low", type=float, default=0.5)
    parser.add_argument("--p95-high-ms", type=float, default=0.0)
    parser.add_argument("--polls", type=int, default=3)
    parser.add_argument("--idle-polls", type=int, default=5)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    key_file = run_dir / "admin.key"
    admin_key = os.environ.get("LLMOPS_ADMIN_KEY") or (key_file.read_text().strip() if key_file.exists() else "")
    if not admin_key:
        parser.error(f"no admin key: set LLMOPS_ADMIN_KEY or deploy so that {key_file} exists")
    policy = Policy(args.min_replicas, args.max_replicas, args.queue_high, args.queue_low, args.p95_high_ms,
                    args.polls, args.idle_polls)
    run(processes.Fleet.load(run_dir, admin_key), policy, args.interval, run_dir / "logs" / "autoscaler.jsonl")


if __name__ == "__main__":
    main()
