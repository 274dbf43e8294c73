"""What eval_report shows beside the numbers: the trend across model versions, and samples for human review."""

from __future__ import annotations

import json
from pathlib import Path

TREND_METRICS = ("perplexity", "fixed_bits_per_byte", "rouge_l", "exact_match", "toxicity_rate")


def version_history(reports_dir: Path, registered_name: str) -> list[tuple[int, dict]]:
    """(version, metrics) of every evaluated version of `registered_name`, oldest first."""
    history = []
    for path in reports_dir.glob(f"{registered_name}-v*.json"):
        version = path.stem.removeprefix(f"{registered_name}-v")
        if version.isdigit():
            history.append((int(version), json.loads(path.read_text()).get("metrics", {})))
    return sorted(history)


def trend_plot(history: list[tuple[int, dict]], path: Path, metrics: tuple[str, ...] = TREND_METRICS) -> Path:
    """One small panel per metric: its value by model version."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3 * len(metrics), 2.6), dpi=100)
    for ax, metric in zip(axes, metrics):
        points = [(v, m[metric]) for v, m in history if isinstance(m.get(metric), (int, float))]
        if points:
            ax.plot(*zip(*points), marker="o", lw=1.2)
        ax.set_title(metric, fontsize=9)
        ax.set_xlabel("model version", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def review_samples(result: dict) -> list[dict]:
    """evaluate_model's examples as review-queue samples: continuations, sampled generations, QA answers."""
    return ([{"kind": "continuation", "prompt": e["prompt"], "output": e["prediction"], "reference": e["reference"]}
             for e in result["examples"]]
            + [{"kind": "sampled", "prompt": g["prompt"], "output": g["text"]} for g in result["sampled_generations"]]
            + [{"kind": "qa", "prompt": e["question"], "output": e["prediction"], "reference": e["answer"]}
               for e in result["qa_examples"]])


def gate_metrics(task_scores: dict, rag_eval: dict, red_team_report: dict, bias_report: dict,
                 resource_benchmark: dict) -> tuple[dict[str, float], dict[str, str]]:
    """The other evaluation assets' numbers under their MLflow names (task_*, rag_*, redteam_*, bias_*, bench_*),
    and, for each one reported missing, its reason."""
    from llm_assets.evaluation import bias_eval, tasks

    values: dict[str, float] = {**tasks.flat_metrics(task_scores), **bias_eval.flat_metrics(bias_report)}
    missing = {f"task_{t}_*": s["missing"] for t, s in task_scores.items() if "missing" in s}
    missing |= {f"task_{t}_{m}": why for t, s in task_scores.items() for m, why in s.get("missing_metrics", {}).items()}
    for name, m in rag_eval["metrics"].items():
        if "value" in m:
            values[f"rag_{name}"] = m["value"]
        else:
            missing[f"rag_{name}"] = m["missing"]
    for category, e in red_team_report["categories"].items():
        if "rate" in e:
            values[f"redteam_{category}_rate"] = e["rate"]
        else:
            missing[f"redteam_{category}_rate"] = e["missing"]
    values |= {f"bench_{k}": v for k, v in resource_benchmark.items() if isinstance(v, (int, float))}
    for prefix, result in (("bias_*", bias_report), ("bench_*", resource_benchmark)):
        if "missing" in result:
            missing[prefix] = result["missing"]
    return values, missing
