"""PNG plots of the monitoring tables over time, for people who do not run Grafana, and the prompt A/B
table: every stored request, its feedback and quality scores, grouped by prompt version."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from llm_assets.monitoring import performance
from llm_assets.monitoring.quality import latest_feedback, positive

AB_COLUMNS = ["prompt_name", "prompt_version", "requests", "error_rate", "latency_p50_ms", "latency_p95_ms",
              "tokens_per_s", "feedback", "positive_feedback_rate", "scored", "toxicity_rate"]


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


def prompt_ab(requests: pd.DataFrame, feedback: pd.DataFrame, scores: pd.DataFrame) -> pd.DataFrame:
    """One row per (prompt name, prompt version): requests, error rate, latency p50/p95 of answered requests,
    the median per-request decode tokens/s, the share of the requests' newest feedback that is positive
    (`quality.positive`), and the toxic share of its sampled quality scores (NaN where there are none)."""
    if requests.empty:
        return pd.DataFrame(columns=AB_COLUMNS)
    key = ["prompt_name", "prompt_version"]
    requests = requests.assign(**{k: requests[k].fillna("") for k in key})
    fb = latest_feedback(feedback).merge(requests[["request_id", *key]], on="request_id")
    fb["positive"] = [positive(r, t) for r, t in zip(fb["rating"], fb["thumbs"])]
    toxic = (scores[["request_id", "toxic"]] if not scores.empty else pd.DataFrame(columns=["request_id", "toxic"])
             ).merge(requests[["request_id", *key]], on="request_id")
    rows = []
    for (name, version), g in requests.groupby(key, sort=True):
        m = performance.summarize(g)
        mine = fb[(fb["prompt_name"] == name) & (fb["prompt_version"] == version)]
        scored = toxic[(toxic["prompt_name"] == name) & (toxic["prompt_version"] == version)]
        rows.append({"prompt_name": name, "prompt_version": version, "requests": m["requests"],
                     "error_rate": m["error_rate"], "latency_p50_ms": m["latency_p50_ms"],
                     "latency_p95_ms": m["latency_p95_ms"], "tokens_per_s": m["decode_tokens_per_s_p50"],
                     "feedback": len(mine),
                     "positive_feedback_rate": float(mine["positive"].mean()) if len(mine) else float("nan"),
                     "scored": len(scored),
                     "toxicity_rate": float(scored["toxic"].astype(float).mean()) if len(scored) else float("nan")})
    return pd.DataFrame(rows, columns=AB_COLUMNS)


def ab_markdown(ab: pd.DataFrame) -> str:
    """The A/B table as Markdown ("-" for a number that has no data)."""
    def num(v, fmt):
        return "-" if v != v else format(v, fmt)

    return "\n".join(["| prompt | version | requests | errors | p50 ms | p95 ms | tok/s | feedback | positive | "
                      "toxic |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"] + [
        f"| {r.prompt_name or '-'} | {r.prompt_version or '-'} | {r.requests} | {num(r.error_rate, '.1%')} | "
        f"{num(r.latency_p50_ms, '.0f')} | {num(r.latency_p95_ms, '.0f')} | {num(r.tokens_per_s, '.1f')} | "
        f"{r.feedback} | {num(r.positive_feedback_rate, '.1%')} | {num(r.toxicity_rate, '.1%')} |"
        for r in ab.itertuples(index=False)])


def ab_plot(ab: pd.DataFrame, path: Path) -> Path | None:
    """Bars per prompt version: latency p50/p95, tokens/s, and error, positive-feedback and toxicity rates."""
    if ab.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{n} {v}".strip() or "-" for n, v in zip(ab["prompt_name"], ab["prompt_version"])]
    panels = [("latency (ms)", ["latency_p50_ms", "latency_p95_ms"]), ("decode tokens/s (p50)", ["tokens_per_s"]),
              ("rates", ["error_rate", "positive_feedback_rate", "toxicity_rate"])]  # NaN (no data) drawn as 0
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 3.4))
    x = np.arange(len(ab))
    for ax, (title, cols) in zip(axes, panels):
        width = 0.8 / len(cols)
        for j, col in enumerate(cols):
            ax.bar(x + (j - (len(cols) - 1) / 2) * width, ab[col].astype(float).fillna(0.0), width, label=col)
        ax.set_title(title)
        ax.set_xticks(x, labels, rotation=20, fontsize=7)
        ax.margins(y=0.3)  # room for the legend above the bars
        if len(cols) > 1:
            ax.legend(fontsize=6, loc="upper left", ncols=len(cols))
    fig.suptitle("prompt A/B: per prompt version")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def build(metrics: pd.DataFrame, costs: pd.DataFrame, quality: pd.DataFrame, drift: pd.DataFrame,
          out_dir: Path, ab: pd.DataFrame | None = None) -> dict[str, Path]:
    """The plots that have data: latency, tokens/s, cost, quality and drift over time, and the prompt A/B
    bars of `ab` (`prompt_ab`)."""
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
        "prompt_ab_plot": ab_plot(ab, out_dir / "prompt_ab.png") if ab is not None else None,
    }
    return {k: v for k, v in plots.items() if v is not None}
