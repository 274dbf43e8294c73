"""PNG plots of the monitoring tables over time, for people who do not run Grafana."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _axes(title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.set_title(title)
    return plt, fig, ax


def line_plot(df: pd.DataFrame, x: str, ys: list[str], by: str | None, path: Path, title: str,
              ylabel: str) -> Path | None:
    """Lines of `ys` over `x`, one per value of `by`; None when there is nothing to draw."""
    if df.empty or not any(y in df for y in ys):
        return None
    plt, fig, ax = _axes(title)
    groups = df.groupby(by) if by else [("", df)]
    for name, g in groups:
        g = g.sort_values(x)
        for y in ys:
            if y in g and g[y].notna().any():
                ax.plot(g[x], g[y], marker="o", label=f"{name} {y}".strip())
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def build(metrics: pd.DataFrame, costs: pd.DataFrame, quality: pd.DataFrame, drift: pd.DataFrame,
          out_dir: Path) -> dict[str, Path]:
    """The plots that have data: latency, tokens/s, cost, quality and drift over time."""
    per_version = metrics[metrics["model_version"] != "all"] if not metrics.empty else metrics
    plots = {
        "latency": line_plot(per_version, "window_end", ["latency_p50_ms", "latency_p95_ms"], "model_version",
                             out_dir / "latency.png", "latency by model version", "ms"),
        "tokens_per_s": line_plot(per_version, "window_end", ["tokens_per_s"], "model_version",
                                  out_dir / "tokens_per_s.png", "throughput by model version", "tokens/s"),
        "cost": line_plot(costs, "day", ["cost_usd"], "model_version", out_dir / "cost.png",
                          "daily serving cost by model version", "USD"),
        "quality": line_plot(quality, "measured_at", ["toxicity_rate", "refusal_rate", "pii_leak_rate",
                                                      "hallucination_rate", "negative_feedback_rate"], None,
                             out_dir / "quality.png", "output quality of sampled requests", "rate"),
        "drift": line_plot(drift, "measured_at", ["input_embedding_auc", "output_embedding_auc",
                                                  "input_stats_drift_share", "output_stats_drift_share"], None,
                           out_dir / "drift.png", "drift against the reference window", "AUC / share"),
    }
    return {k: v for k, v in plots.items() if v is not None}
