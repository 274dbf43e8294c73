"""Task benchmarks through lm-evaluation-harness (`lm-eval`), offline, on an exported model directory.

The project's tasks (YAMLs in `tasks/` beside this module) read JSONL files that `build_task_data`
writes from our own held-out data: the validation documents of the curated corpus, recovered from the
token shards (the validation stream split at EOS and decoded with the model's tokenizer). Each sample
is a passage of `context_words` words drawn, seeded, from those documents:

- `llmops_next_passage` (multiple choice): which of four spans of `choice_words` words continues the
  passage? One is the true continuation, three come from other passages. acc, acc_norm.
- `llmops_cloze` (loglikelihood): the word after the passage, LAMBADA-style. acc (the word is the
  greedy continuation) and perplexity.
- `llmops_cloze_gen` (generation, the path short-answer QA tasks take): the model writes up to 8
  tokens; exact match of their first word with the true next word.

A task is a YAML name in `tasks/` or a path to any lm-eval task YAML; relative `data_files` resolve
in the run's data directory. `standard_tasks` are lm-eval's own (boolq, hellaswag, ...): their data
comes from the Hugging Face hub, so offline they come back missing with the reason.

lm-eval runs in a child process, `python -m llm_assets.evaluation.tasks run.json`: the hub's offline
switches are read at import time, and whatever goes wrong there costs the tasks, not the caller. Every
task is loaded and scored on its own, so a broken YAML, a missing data file or an unfetchable data set
is `{"missing": reason}` for that task while the others still score; a metric of its metric_list that
lm-eval drops (an unknown name) is under "missing_metrics" with lm-eval's warning.

Scores per task: {metric: value, "n": samples scored, "ci95": {metric: [lo, hi]}}. The 95% intervals
are Wilson's for rates (acc, acc_norm, exact_match), log-scale from lm-eval's bootstrapped stderr for
perplexity, and ±1.96 × stderr for other metrics.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from llm_assets.evaluation.metrics import wilson_interval

TASKS_DIR = Path(__file__).with_name("tasks")
PROJECT_TASKS = ("llmops_next_passage", "llmops_cloze", "llmops_cloze_gen")
RATE_METRICS = {"acc", "acc_norm", "acc_mutual_info", "acc_bytes", "exact_match"}
BOOTSTRAP_ITERS = 1000
NOT_METRICS = {"n", "ci95", "missing_metrics"}
# The cloze target: the leading word characters of the next word (trailing punctuation dropped).
# llmops_cloze_gen.yaml extracts the model's answer with the same pattern.
WORD = re.compile(r"\w+(?:['-]\w+)*")


# ---- task data from the validation shards

def validation_documents(sequences: np.ndarray, tokenizer, eos_id: int) -> list[str]:
    """The validation documents: the packed stream split at EOS, each part decoded (empty ones dropped).

    Packing writes documents in order, each followed by EOS, so the flattened windows are the documents
    again; only the last one may be cut where the stream's tail did not fill a window.
    """
    flat = np.asarray(sequences).reshape(-1).astype(np.int64)
    cuts = np.flatnonzero(flat == eos_id)
    docs = [tokenizer.decode(part.tolist(), skip_special_tokens=True).strip()
            for part in np.split(flat, cuts + 1)]
    return [d for d in docs if d]


def passages(documents: list[str], words: int, seed: int = 0) -> list[tuple[int, list[str]]]:
    """Non-overlapping runs of `words` words from each document, as (document index, words), shuffled (seeded)."""
    out = []
    for i, doc in enumerate(documents):
        w = doc.split()
        out += [(i, w[s:s + words]) for s in range(0, len(w) - words + 1, words)]
    random.Random(seed).shuffle(out)
    return out


def next_passage_rows(documents: list[str], samples: int, context_words: int, choice_words: int,
                      choices: int = 4, seed: int = 0) -> list[dict]:
    """Rows {context, choices, label}: the true next `choice_words` words among spans from other passages."""
    pool = passages(documents, context_words + choice_words, seed)
    spans = [" ".join(words[context_words:]) for _, words in pool]
    rng = random.Random(seed + 1)
    rows = []
    for k, (_, words) in enumerate(pool):
        if len(rows) == samples:
            break
        options: list[str] = []
        for _ in range(100 * choices):  # distinct spans of other passages, drawn at random
            j = rng.randrange(len(pool))
            if j != k and spans[j] != spans[k] and spans[j] not in options:
                options.append(spans[j])
            if len(options) == choices - 1:
                break
        else:
            continue
        label = rng.randrange(choices)
        options.insert(label, spans[k])
        rows.append({"context": " ".join(words[:context_words]), "choices": options, "label": label})
    return rows


def cloze_rows(documents: list[str], samples: int, context_words: int, seed: int = 0) -> list[dict]:
    """Rows {context, target}: `context_words` words and the next word (its leading word characters)."""
    rows = []
    for _, words in passages(documents, context_words + 1, seed):
        if len(rows) == samples:
            break
        target = WORD.match(words[-1])
        if target:
            rows.append({"context": " ".join(words[:-1]), "target": target.group(0)})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def build_task_data(shard_dir: str, model_dir: str, data_dir: str | Path, *, samples: int, context_words: int,
                    choice_words: int, seed: int = 0) -> dict[str, int]:
    """Write the project tasks' JSONL files from the validation shards; returns rows per file."""
    from transformers import AutoTokenizer

    from llm_assets.tokens.shards import read_manifest, read_split

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else read_manifest(shard_dir).get("eos_token_id")
    if eos is None:
        raise ValueError(f"neither the tokenizer in {model_dir} nor {shard_dir}/manifest.json names an EOS token")
    docs = validation_documents(read_split(shard_dir, "validation"), tokenizer, eos)
    files = {"llmops_next_passage.jsonl": next_passage_rows(docs, samples, context_words, choice_words, seed=seed),
             "llmops_cloze.jsonl": cloze_rows(docs, samples, context_words, seed=seed)}
    for name, rows in files.items():
        write_jsonl(rows, Path(data_dir) / name)
    return {name: len(rows) for name, rows in files.items()}


# ---- scores from lm-eval's results

def confidence_interval(metric: str, value: float, n: int, stderr) -> list[float] | None:
    """95% interval: Wilson for rates, on the log scale for perplexities, else ±1.96 × stderr."""
    if metric in RATE_METRICS:
        return wilson_interval(value * n, n)
    if not isinstance(stderr, (int, float)) or not math.isfinite(stderr):
        return None
    if metric.endswith("perplexity") and value > 0:
        half = 1.96 * stderr / value  # delta method: stderr of log(perplexity)
        return [value * math.exp(-half), value * math.exp(half)]
    return [value - 1.96 * stderr, value + 1.96 * stderr]


def summarize(task_result: dict, n: int, expected: list[str] = (), warnings: list[str] = ()) -> dict:
    """One task's lm-eval results ({"acc,none": v, "acc_stderr,none": s, ...}) as {metric: value, "n", "ci95"}.

    A metric computed under a filter other than "none" is named `<metric>_<filter>` only when the bare
    name is taken already. An `expected` metric (the YAML's metric_list) with no value goes to
    "missing_metrics" with lm-eval's warnings that name it as the reason.
    """
    out: dict = {}
    ci: dict[str, list[float] | None] = {}
    for key, value in task_result.items():
        if "," not in key or "_stderr," in key or not isinstance(value, (int, float)):
            continue
        metric, filt = key.split(",", 1)
        name = metric if metric not in out else f"{metric}_{filt}"
        out[name] = float(value)
        ci[name] = confidence_interval(metric, float(value), n, task_result.get(f"{metric}_stderr,{filt}"))
    computed = {k.split(",", 1)[0] for k in task_result if "," in k}
    missing = {m: "; ".join(w for w in warnings if m in w) or "lm-eval computed no value for it"
               for m in expected if m not in computed}
    if not out:
        return {"missing": "; ".join(f"{m}: {r}" for m, r in missing.items()) or
                f"lm-eval returned no metric (keys: {sorted(task_result)})"}
    return {**out, "n": n, "ci95": ci, **({"missing_metrics": missing} if missing else {})}


def flat_metrics(scores: dict) -> dict[str, float]:
    """`task_<task>_<metric>` -> value for every scored metric (for MLflow and asset metadata)."""
    return {f"task_{task}_{metric}": value for task, s in scores.items() if "missing" not in s
            for metric, value in s.items() if metric not in NOT_METRICS}


def _cell(text: str) -> str:
    return text[:300].replace("\n", " ").replace("|", "\\|")


def scores_table_md(scores: dict) -> str:
    """A Markdown table: task, metric, value, 95% CI, n; a missing task or metric with its reason."""
    rows = []
    for task, s in scores.items():
        if "missing" in s:
            rows.append(f"| {task} | - | missing: {_cell(s['missing'])} | | |")
            continue
        for metric, value in s.items():
            if metric not in NOT_METRICS:
                ci = s["ci95"].get(metric)
                rows.append(f"| {task} | {metric} | {value:.4g} | {f'[{ci[0]:.3g}, {ci[1]:.3g}]' if ci else '-'} "
                            f"| {s['n']} |")
        for metric, reason in s.get("missing_metrics", {}).items():
            rows.append(f"| {task} | {metric} | missing: {_cell(reason)} | | |")
    return "| task | metric | value | 95% CI | n |\n|---|---|---|---|---|\n" + "\n".join(rows)


# ---- running lm-eval

def task_spec(task: str) -> tuple[str, str]:
    """(name, spec): a project task name with the path of its YAML, a YAML path under its file's stem."""
    if task.endswith((".yaml", ".yml")):
        return Path(task).stem, str(Path(task).resolve())
    path = TASKS_DIR / f"{task}.yaml"
    return task, str(path) if path.exists() else task


def run_tasks(model_dir: str, tasks: list[str], run_dir: str | Path, *, standard_tasks: list[str] = (),
              samples: int = 100, batch_size: int = 16, seed: int = 0, offline: bool = True, threads: int = 1,
              cache_dir: str | Path | None = None, timeout_s: float = 1800) -> dict:
    """Score `tasks` and `standard_tasks` on the model in `model_dir`; returns {task: scores or {"missing": reason}}.

    `run_dir` holds data/ (the tasks' JSONL, the child's working directory), run.json, scores.json and
    lm_eval.log. A child that dies or runs past `timeout_s` makes every task missing with that reason.
    `threads`: torch's CPU threads in the child; a model of the demo's size gains nothing from more, and
    on a busy machine each extra OpenMP thread spins (2 threads ran the demo's tasks 2.5x slower).
    """
    run_dir = Path(run_dir).resolve()
    data_dir = run_dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    out = run_dir / "scores.json"
    out.unlink(missing_ok=True)
    specs = dict(task_spec(t) for t in tasks) | {t: t for t in standard_tasks}
    run = {"model_dir": str(Path(model_dir).resolve()), "tasks": specs, "standard": list(standard_tasks),
           "samples": samples, "batch_size": batch_size, "seed": seed, "offline": offline, "out": str(out)}
    (run_dir / "run.json").write_text(json.dumps(run, indent=2))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads)}
    if cache_dir:
        env["HF_HOME"] = str(Path(cache_dir).resolve())
    if offline:
        env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    log = run_dir / "lm_eval.log"
    try:
        with log.open("w") as f:
            proc = subprocess.run([sys.executable, "-m", "llm_assets.evaluation.tasks", str(run_dir / "run.json")],
                                  cwd=data_dir, env=env, stdout=f, stderr=subprocess.STDOUT, timeout=timeout_s)
        failure = None if proc.returncode == 0 and out.exists() else f"lm-eval exited with code {proc.returncode}"
    except subprocess.TimeoutExpired:
        failure = f"lm-eval ran past timeout_s={timeout_s}"
    if failure:
        tail = log.read_text(errors="replace")[-1500:]
        out.write_text(json.dumps({t: {"missing": f"{failure} (log {log}): ...{tail}"} for t in specs}, indent=2))
    return json.loads(out.read_text())


class _Warnings(logging.Handler):
    """lm-eval's warnings while one task loads and runs: the reasons for metrics it silently drops."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _score_one(name: str, spec: str, manager, lm, run: dict, offline_note: str) -> dict:
    """Load and evaluate one task spec; {leaf task: scores}, or {name: {"missing": reason}}."""
    import lm_eval

    warnings = _Warnings()
    logging.getLogger("lm_eval").addHandler(warnings)
    try:
        loaded = manager.load([spec])
        if not loaded["tasks"]:
            return {name: {"missing": f"{spec!r} names no task"}}
        result = lm_eval.simple_evaluate(model=lm, tasks=list(loaded["tasks"].values()), task_manager=manager,
                                         limit=run["samples"], bootstrap_iters=BOOTSTRAP_ITERS, log_samples=False,
                                         random_seed=run["seed"], numpy_random_seed=run["seed"],
                                         torch_random_seed=run["seed"], fewshot_random_seed=run["seed"])
    except Exception as e:  # noqa: BLE001 - reported per task, never a crash of the whole evaluation
        reason = f"{type(e).__name__}: {e}".strip()
        return {name: {"missing": f"{offline_note}{reason}" if name in run["standard"] else reason}}
    finally:
        logging.getLogger("lm_eval").removeHandler(warnings)
    scores = {}
    for task, obj in loaded["tasks"].items():
        n = result["n-samples"].get(task, {}).get("effective", 0)
        expected = [m["metric"] for m in obj.config.metric_list or [] if isinstance(m.get("metric"), str)]
        scores[name if len(loaded["tasks"]) == 1 else task] = (
            summarize(result["results"].get(task, {}), n, expected, warnings.messages) if n
            else {"missing": "the task has no samples"})
    return scores


def main(argv: list[str] | None = None) -> None:
    """Child process: score the tasks of run.json and write scores.json.

        python -m llm_assets.evaluation.tasks <run_dir>/run.json   (cwd: <run_dir>/data)
    """
    run = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=run["model_dir"], device="cpu", batch_size=run["batch_size"])
    project = TaskManager(include_defaults=False)
    standard = TaskManager() if run["standard"] else None  # indexing lm-eval's ~15k task YAMLs takes seconds
    note = "offline (HF_HUB_OFFLINE=1, HF_DATASETS_OFFLINE=1; set offline false to fetch the data): " \
        if run["offline"] else ""
    scores: dict = {}
    for name, spec in run["tasks"].items():
        scores.update(_score_one(name, spec, standard if name in run["standard"] else project, lm, run, note))
        print(f"{name}: {json.dumps(scores.get(name, '(group)'))}", flush=True)
    Path(run["out"]).write_text(json.dumps(scores, indent=2))


if __name__ == "__main__":
    main()
