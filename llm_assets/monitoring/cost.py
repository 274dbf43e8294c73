"""Serving cost per model version from a price table: per hour, per 1k tokens, and daily totals.

A replica is billed while it serves: from the start of its first request of a day to the end of its last
one, at least `min_billed_minutes`. Its hourly price is `cpu_hour_usd * replica_cpus` on CPU, or
`gpu_instance_hour_usd` for the model versions listed as served on GPU instances.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass(frozen=True)
class PriceTable:
    cpu_hour_usd: float = 0.034
    """One vCPU for an hour (on-demand cloud list price, order of magnitude)."""
    replica_cpus: float = 2.0
    gpu_instance_hour_usd: float = 2.50
    gpu_versions: tuple[str, ...] = field(default_factory=tuple)
    min_billed_minutes: float = 1.0

    def hourly(self, model_version: str) -> float:
        if model_version in self.gpu_versions:
            return self.gpu_instance_hour_usd
        return self.cpu_hour_usd * self.replica_cpus


def daily_costs(rows: pd.DataFrame, prices: PriceTable) -> pd.DataFrame:
    """One row per (day, model, model_version): replicas, billed hours, cost, tokens, cost per 1k tokens."""
    cols = ["day", "model", "model_version", "replicas", "billed_hours", "hourly_usd", "cost_usd", "requests",
            "tokens", "cost_per_1k_tokens_usd"]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    df = rows.assign(
        day=rows["timestamp"].dt.strftime("%Y-%m-%d"),
        start=rows["timestamp"] - pd.to_timedelta(rows["latency_ms"].fillna(0), unit="ms"),
        tokens=rows["prompt_tokens"].fillna(0) + rows["completion_tokens"].fillna(0),
        replica=rows["replica"].replace("", "unknown"))
    floor_h = prices.min_billed_minutes / 60
    per_replica = df.groupby(["day", "model", "model_version", "replica"]).agg(
        start=("start", "min"), end=("timestamp", "max"), requests=("request_id", "count"), tokens=("tokens", "sum"))
    per_replica["billed_hours"] = ((per_replica["end"] - per_replica["start"]).dt.total_seconds() / 3600).clip(
        lower=floor_h)
    out = per_replica.groupby(["day", "model", "model_version"]).agg(
        replicas=("billed_hours", "size"), billed_hours=("billed_hours", "sum"), requests=("requests", "sum"),
        tokens=("tokens", "sum")).reset_index()
    out["hourly_usd"] = [prices.hourly(v) for v in out["model_version"]]
    out["cost_usd"] = out["billed_hours"] * out["hourly_usd"]
    out["cost_per_1k_tokens_usd"] = out["cost_usd"] / out["tokens"].where(out["tokens"] > 0) * 1000
    return out[cols].astype({"replicas": int, "requests": int, "tokens": int})


def budget_verdict(costs: pd.DataFrame, daily_budget_usd: float) -> tuple[bool, str, float, str]:
    """(within budget, the latest day, its total, why) for the daily budget."""
    if costs.empty:
        return True, "", 0.0, "no requests logged: nothing spent"
    day = costs["day"].max()
    total = float(costs.loc[costs["day"] == day, "cost_usd"].sum())
    ok = total <= daily_budget_usd
    return ok, day, total, (f"{day}: ${total:.4f} {'within' if ok else 'over'} the daily budget "
                            f"${daily_budget_usd:.4f}")
