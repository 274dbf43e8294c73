"""What a training run records beside its metrics: the code's git state, params, and a loss plot."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from mlflow.entities import Param
from mlflow.tracking import MlflowClient


def git_state(repo_dir: str | Path) -> dict[str, str]:
    """{"commit": HEAD or "unknown", "dirty": "true"/"false"/"unknown"} of the code that trains."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True,
                              timeout=30, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
    except (subprocess.SubprocessError, OSError):
        return {"commit": "unknown", "dirty": "unknown"}
    try:
        dirty = "true" if git("status", "--porcelain", "--untracked-files=no") else "false"
    except (subprocess.SubprocessError, OSError):
        dirty = "unknown"
    return {"commit": commit, "dirty": dirty}


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log params in batches (MLflow takes at most 100 per call); re-logging an equal value is allowed."""
    items = [Param(k, v) for k, v in sorted(params.items())]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


RUN_ID_FILE = "mlflow_run_id"  # in the checkpoint directory: the MLflow run its steps were logged to


def _recorded_run(client: MlflowClient, ckpt_dir: Path):
    path = ckpt_dir / RUN_ID_FILE
    if not path.exists():
        return None
    try:
        return client.get_run(path.read_text().strip())
    except Exception:  # a deleted run or another tracking store: treat as no run
        return None


def start_or_resume_run(tracking, client: MlflowClient, ckpt_dir: Path, run_name: str, tags: dict[str, str],
                        log: Callable[[str], None]) -> str:
    """The unfinished MLflow run of an interrupted training in `ckpt_dir` (so its loss curve continues
    in one run), or a new run recorded there."""
    run = _recorded_run(client, ckpt_dir)
    if run is not None and run.info.status in ("RUNNING", "FAILED", "KILLED"):
        run_id = run.info.run_id
        log(f"continuing MLflow run {run_id} of the interrupted training in {ckpt_dir}")
        client.update_run(run_id, status="RUNNING")
        for k, v in tags.items():
            client.set_tag(run_id, k, v)
        return run_id
    run_id = tracking.start_run(run_name, tags)
    (ckpt_dir / RUN_ID_FILE).write_text(run_id)
    return run_id


def finished_run(client: MlflowClient, ckpt_dir: Path, max_steps: int) -> tuple[str, dict] | None:
    """(run id, result.json) when `ckpt_dir` holds a run trained to `max_steps` whose MLflow run finished."""
    result_file = ckpt_dir / "result.json"
    if not result_file.exists() or not (ckpt_dir / "hf_final").is_dir():
        return None
    result = json.loads(result_file.read_text())
    run = _recorded_run(client, ckpt_dir)
    if result.get("steps") != max_steps or run is None or run.info.status != "FINISHED":
        return None
    return run.info.run_id, result


def loss_plot(client: MlflowClient, run_id: str, path: Path) -> Path | None:
    """A PNG of the run's loss by step, or None when the run logged no loss."""
    history = sorted({m.step: m.value for m in client.get_metric_history(run_id, "loss")}.items())
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, values = zip(*history)
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(steps, values, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    ax.set_title(f"run {run_id[:8]}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
