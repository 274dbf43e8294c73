"""Evaluation stage: every measure of the exported model (held-out metrics, tasks, RAG, red team, bias,
resources), gathered into eval_report, and the blocking gate before deployment."""

# No `from __future__ import annotations`: Dagster 1.13 reads the config and resource
# parameters' annotations as objects, and string annotations break its config inference.

import dataclasses
import json
import time
from pathlib import Path

import dagster as dg

from llm_assets.artifacts import CommittedTable, ExportedModel, ShardSet
from llm_assets.data.bias import image_markdown
from llm_assets.evaluation import bias_eval, gate, metrics, rag, red_team, report as eval_plots, review
from llm_assets.tokens.assets import local_shards
from resources.lakehouse import LakehouseResource
from resources.serving import ServingResource
from resources.settings import SettingsResource
from resources.spark import SparkResource
from resources.tracking import TrackingResource


class EvalConfig(dg.Config):
    """Used by: eval_report. Sample sizes are sequences drawn (seeded) from the validation shards."""

    perplexity_sequences: int = 64
    rouge_samples: int = 16
    toxicity_samples: int = 16
    prompt_tokens: int = 32
    """Prompt: the first tokens of a validation sequence."""
    continuation_tokens: int = 32
    """Reference: the next tokens; the greedy continuation has this length too."""
    max_new_tokens: int = 32
    """Length of the sampled generations scored for toxicity."""
    temperature: float = 1.0
    top_k: int = 50
    toxicity_threshold: float = 0.5
    batch_size: int = 8
    seed: int = 0
    review_samples: int = 4
    """Generations of each kind (continuation, sampled, QA) queued for human review per version."""


class GateConfig(dg.Config):
    """Used by: eval_gate. `max_*` is an upper bound, `min_*` a lower bound (see evaluation/gate.py)."""

    max_perplexity: float = gate.DEFAULT_THRESHOLDS["max_perplexity"]
    min_rouge_l: float = gate.DEFAULT_THRESHOLDS["min_rouge_l"]
    max_toxicity_rate: float = gate.DEFAULT_THRESHOLDS["max_toxicity_rate"]
    max_regression: dict[str, float] = gate.DEFAULT_REGRESSIONS
    """Metric -> relative worsening allowed against the promoted version (0.25: 25% worse at most)."""
    thresholds: dict[str, float] = gate.SUITE_THRESHOLDS
    """More `max_<metric>`/`min_<metric>` bounds on the other evaluation assets' metrics (task_*, rag_*,
    redteam_*, bias_*, bench_*). A metric named here is required: reported missing, it fails the gate."""


def metrics_table_md(values: dict[str, float]) -> str:
    rows = "\n".join(f"| {k} | {v:.4g} |" for k, v in values.items())
    return f"| metric | value |\n|---|---|\n{rows}"


@dg.asset(group_name="evaluation", kinds={"pytorch", "mlflow"})
def eval_report(context: dg.AssetExecutionContext, config: EvalConfig, exported_model: ExportedModel,
                token_shards: ShardSet, task_scores: dict, rag_eval: dict, red_team_report: dict, bias_report: dict,
                resource_benchmark: dict, settings: SettingsResource, lakehouse: LakehouseResource,
                tracking: TrackingResource) -> dg.Output[dict]:
    """The whole evaluation of the exported model: perplexity, bits per byte, ROUGE, BLEU, QA exact match/F1 and
    toxicity on held-out data, with the task, RAG, red-team, bias and resource results; the gate reads it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm_assets.tokens.shards import read_split

    shard_dir = local_shards(token_shards, settings)
    sequences = read_split(shard_dir, "validation")
    if len(sequences) == 0:
        raise ValueError(f"token_shards at {shard_dir} has no validation sequences to evaluate on")
    problem = _tokenizer_problem(context, exported_model)
    tokenizer = None if problem else AutoTokenizer.from_pretrained(exported_model.path)
    model = AutoModelForCausalLM.from_pretrained(exported_model.path, dtype=torch.float32)
    context.log.info(f"evaluating {exported_model.registered_name} v{exported_model.version} on "
                     f"{len(sequences)} validation sequences of {sequences.shape[1]} tokens")
    result = metrics.evaluate_model(model, tokenizer, sequences, examples=config.review_samples,
                                    **config.model_dump(exclude={"review_samples"}))
    name, version = exported_model.registered_name, exported_model.version
    queued = review.enqueue(lakehouse.root, name, version, eval_plots.review_samples(result),
                            lakehouse.storage_options())
    verdicts = review.summary(lakehouse.root, name, version, lakehouse.storage_options())
    suite, missing = eval_plots.gate_metrics(task_scores, rag_eval, red_team_report, bias_report, resource_benchmark)
    if problem:
        missing |= {m: problem for m in metrics.TOKENIZER_METRICS}
    values = {**result["metrics"], **suite}
    report = {
        "model": {"registered_name": exported_model.registered_name, "version": exported_model.version,
                  "path": exported_model.path, "mlflow_run_id": exported_model.mlflow_run_id,
                  "data_commit": exported_model.data_commit},
        "token_shards": {"path": token_shards.path, "manifest_sha256": token_shards.manifest_sha256},
        "config": config.model_dump(),
        "human_review": verdicts,
        **result,
        "metrics": values,
        "missing": missing,
    }
    path = settings.path("reports", "eval", f"{name}-v{version}.json")
    path.write_text(json.dumps(report, indent=2))
    baseline = promoted_baseline(tracking, exported_model, path.parent)
    trend = eval_plots.trend_plot(eval_plots.version_history(path.parent, name), path.with_suffix(".trend.png"))

    client = tracking.client()
    for metric, value in result["metrics"].items():  # the other assets log their own
        client.log_metric(exported_model.mlflow_run_id, f"eval_{metric}", value)
    for artifact in (path, trend):
        client.log_artifact(exported_model.mlflow_run_id, str(artifact), artifact_path="eval")
    context.log.info(f"queued {queued} generations for human review; verdicts so far {verdicts}")

    red_team_bars = Path(red_team_report["report_path"]).with_suffix(".png")
    examples = "\n\n".join(f"**prompt** {e['prompt']!r}\n\n**reference** {e['reference']!r}\n\n"
                           f"**prediction** {e['prediction']!r}" for e in result["examples"])
    return dg.Output(
        {**values, **result["samples"], "report_path": str(path), "model_version": exported_model.version,
         "baseline": baseline, "missing": missing},
        metadata={
            **{k: dg.MetadataValue.float(float(v)) for k, v in result["metrics"].items()},
            **{k: dg.MetadataValue.int(int(v)) for k, v in result["samples"].items()},
            **{k: dg.MetadataValue.int(int(v)) for k, v in result["lengths"].items()},
            "metrics": dg.MetadataValue.md(metrics_table_md(values)),
            "missing": dg.MetadataValue.json(missing),
            "ci95": dg.MetadataValue.json(result["intervals"]),
            "examples": dg.MetadataValue.md(examples or "-"),
            "report": dg.MetadataValue.path(str(path)),
            "model_version": exported_model.version,
            "promoted_version": baseline["version"] if baseline else "none",
            "trend": dg.MetadataValue.md(image_markdown(trend, "metrics by model version")),
            **({"red_team": dg.MetadataValue.md(image_markdown(red_team_bars, "red-team failure rate by category"))}
               if red_team_bars.exists() else {}),
            "human_review": dg.MetadataValue.json(verdicts),
            "mlflow_run_id": exported_model.mlflow_run_id,
            "data_commit": exported_model.data_commit,
        },
    )


def _tokenizer_problem(context: dg.AssetExecutionContext, model: ExportedModel) -> str | None:
    """Why the model's tokenizer is unusable (its text metrics are then reported missing), or None."""
    problem = metrics.tokenizer_problem(model.path)
    if problem:
        context.log.warning(f"{problem}: the metrics that need it are reported missing")
    return problem


def promoted_baseline(tracking: TrackingResource, model: ExportedModel, reports_dir) -> dict | None:
    """{"version", "metrics"} of the promoted version of the same registered model, when it is another
    version and its report exists; else None."""
    version = tracking.promoted_version(model.registered_name)
    report = reports_dir / f"{model.registered_name}-v{version}.json"
    if version is None or version == model.version or not report.exists():
        return None
    return {"version": version, "metrics": json.loads(report.read_text())["metrics"]}


@dg.asset_check(asset=eval_report, blocking=True,
                description="Perplexity, ROUGE-L and toxicity within thresholds; blocks quantize and deploy.")
def eval_gate(config: GateConfig, eval_report: dict) -> dg.AssetCheckResult:
    """Each gated metric against its threshold and its allowed regression; a missing metric fails."""
    thresholds = {**config.model_dump(exclude={"max_regression", "thresholds"}), **config.thresholds}
    _, rows = gate.evaluate_gate(eval_report, thresholds, eval_report.get("missing"))
    rows += gate.regression_rows(eval_report, eval_report.get("baseline"), config.max_regression)
    passed = all(r.passed for r in rows)
    metadata: dict = {"gate": dg.MetadataValue.md(gate.gate_table_md(rows))}
    for r in rows:
        metadata[f"{r.metric}"] = dg.MetadataValue.float(r.value) if r.value is not None else "missing"
        key = r.metric if r.op in ("<=", ">=") else f"{r.metric}_vs_promoted"
        metadata[f"{key}_threshold"] = dg.MetadataValue.text(f"{r.op} {r.threshold:g}")
        metadata[f"{key}_passed"] = dg.MetadataValue.bool(r.passed)
    failed = [f"{r.metric}: {r.reason}" for r in rows if not r.passed]
    return dg.AssetCheckResult(
        passed=passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata,
        description="all metrics within thresholds" if passed else f"failed: {'; '.join(failed)}",
    )


class TaskScoresConfig(dg.Config):
    """Used by: task_scores. lm-evaluation-harness tasks on the exported model (see evaluation/tasks.py)."""

    tasks: list[str] = ["llmops_next_passage", "llmops_cloze", "llmops_cloze_gen"]
    """Task YAML names in llm_assets/evaluation/tasks/, or paths to lm-eval task YAML files."""
    standard_tasks: list[str] = []
    """lm-eval's own tasks, e.g. SuperGLUE ["boolq", "cb", "copa", "rte", "wic", "wsc"] or HELM-style
    ["hellaswag", "openbookqa", "piqa", "arc_easy", "mmlu"]. Their data is on the Hugging Face hub:
    set `offline: false` on a machine that reaches it; offline each is reported missing with the reason."""
    offline: bool = True
    samples: int = 100
    """Samples per task: rows built from the validation documents, and lm-eval's limit."""
    context_words: int = 32
    choice_words: int = 8
    """Length of each choice of llmops_next_passage."""
    batch_size: int = 16
    threads: int = 1
    """torch's CPU threads for the model; raise it for models much larger than the demo's."""
    seed: int = 0
    timeout_s: int = 1800


def _run_tasks(context: dg.AssetExecutionContext, config: TaskScoresConfig, exported_model: ExportedModel,
               token_shards: ShardSet, settings: SettingsResource, run_dir: Path) -> dict:
    from llm_assets.evaluation import tasks as lm_tasks

    rows = lm_tasks.build_task_data(local_shards(token_shards, settings), exported_model.path, run_dir / "data", samples=config.samples,
                                    context_words=config.context_words, choice_words=config.choice_words,
                                    seed=config.seed)
    context.log.info(f"task data from the validation shards: {rows}; running lm-eval on "
                     f"{len(config.tasks) + len(config.standard_tasks)} tasks")
    return lm_tasks.run_tasks(exported_model.path, config.tasks, run_dir, standard_tasks=config.standard_tasks,
                              samples=config.samples, batch_size=config.batch_size, seed=config.seed,
                              offline=config.offline, threads=config.threads,
                              cache_dir=settings.cache("huggingface"), timeout_s=config.timeout_s)


@dg.asset(group_name="evaluation", kinds={"pytorch", "mlflow"})
def task_scores(context: dg.AssetExecutionContext, config: TaskScoresConfig, exported_model: ExportedModel,
                token_shards: ShardSet, settings: SettingsResource, tracking: TrackingResource) -> dg.Output[dict]:
    """Task benchmarks (lm-evaluation-harness, offline) of the exported model on held-out validation documents."""
    from llm_assets.evaluation import tasks as lm_tasks

    run_dir = settings.dir("reports", "eval", f"{exported_model.registered_name}-v{exported_model.version}-tasks")
    if problem := _tokenizer_problem(context, exported_model):
        scores = {t: {"missing": problem} for t in [*config.tasks, *config.standard_tasks]}
        (run_dir / "scores.json").write_text(json.dumps(scores, indent=2))
    else:
        scores = _run_tasks(context, config, exported_model, token_shards, settings, run_dir)
    for task, s in scores.items():
        if "missing" in s:
            context.log.warning(f"{task}: missing: {s['missing']}")
        else:
            context.log.info(f"{task}: {s}")

    values = lm_tasks.flat_metrics(scores)
    client = tracking.client()
    for name, value in values.items():
        client.log_metric(exported_model.mlflow_run_id, name, value)
    client.log_artifact(exported_model.mlflow_run_id, str(run_dir / "scores.json"), artifact_path="eval")
    return dg.Output(scores, metadata={
        **{k: dg.MetadataValue.float(float(v)) for k, v in values.items()},
        **{f"task_{t}_n": dg.MetadataValue.int(s["n"]) for t, s in scores.items() if "n" in s},
        "tasks": dg.MetadataValue.md(lm_tasks.scores_table_md(scores)),
        "missing": dg.MetadataValue.int(sum("missing" in s for s in scores.values())),
        "report": dg.MetadataValue.path(str(run_dir / "scores.json")),
        "model_version": exported_model.version,
        "mlflow_run_id": exported_model.mlflow_run_id,
    })


# ---------------------------------------------------------------- RAG: a vector index of the corpus, answers from it


class RagIndexConfig(dg.Config):
    """Used by: rag_index. Chunking and the cap on indexed passages (llm_assets/evaluation/rag.py)."""

    passage_words: int = 80
    max_passages: int = 400
    """At most this many passages are embedded, chosen by a hash of their id: the demo corpus's ~8k
    passages would take several minutes to embed on 2 cores. The metadata says when the cap applied."""
    batch_size: int = 32
    seed: int = 0
    probe_query: str = "How do I install the package?"
    """Searched once after the build; its latency goes in the metadata."""


class RagEvalConfig(dg.Config):
    """Used by: rag_eval. Sample sizes, answers and the judge (llm_assets/evaluation/rag_answers.py)."""

    retrieval_questions: int = 100
    """Cloze questions generated from indexed passages, for recall@k and MRR."""
    ks: list[int] = [1, 5, 10]
    rag_questions: int = 16
    """The first of them, answered by the model from its retrieved passages and graded."""
    context_passages: int = 2
    max_tokens: int = 32
    support_threshold: float = 0.5
    """A claim is supported when at least this share of its content tokens is in the passages shown."""
    judge_url: str = ""
    """OpenAI-compatible base URL of the judge for faithfulness and answer relevancy; empty: the evaluated
    model's own temporary endpoint."""
    judge_model: str = ""
    """Model name sent to judge_url (needed with it)."""
    judge_api_key: str = ""
    """Set from the environment in run config, e.g. `judge_api_key: {env: JUDGE_API_KEY}`."""
    judge_timeout_s: float = 60.0
    judge_max_failures: int = 3
    """Failures without any success after which the judge is given up on (the metric is then missing)."""
    answer_timeout_s: float = 120.0
    seed: int = 0


@dg.asset(group_name="evaluation", kinds={"lancedb", "spark"})
def rag_index(context: dg.AssetExecutionContext, config: RagIndexConfig, curated_corpus: CommittedTable,
              settings: SettingsResource, spark: SparkResource,
              lakehouse: LakehouseResource) -> dg.Output[rag.RagIndex]:
    """Passages of the curated corpus embedded with all-MiniLM-L6-v2 in LanceDB, one table version per data commit."""
    start = time.perf_counter()
    docs = lakehouse.read(spark.session(), curated_corpus.table).select("doc_id", "text")
    passages, total, documents = rag.chunk_corpus(((r.doc_id, r.text) for r in docs.toLocalIterator()),
                                                  config.passage_words, config.max_passages, config.seed)
    context.log.info(f"{total:,} passages of <= {config.passage_words} words from {documents:,} documents; "
                     f"indexing {len(passages):,} (max_passages={config.max_passages})")
    embed_start = time.perf_counter()
    index = rag.build_index(passages, settings.dir("vector"), curated_corpus.commit_id, passages_total=total,
                            documents=documents, passage_words=config.passage_words, batch_size=config.batch_size,
                            log=context.log.info)
    embed_s = time.perf_counter() - embed_start
    build_s = time.perf_counter() - start
    probe = rag.probe_latency(rag.open_index(index), config.probe_query)
    capped = total > len(passages)
    return dg.Output(index, metadata={
        "rows": index.rows,
        "passages_total": total,
        "documents": documents,
        "capped": capped,
        "cap": (f"indexed {index.rows:,} of {total:,} passages (max_passages={config.max_passages}, chosen by hash "
                f"of passage id)" if capped else f"all {total:,} passages indexed"),
        "data_commit": index.data_commit,
        "embedding_model": index.embedding_model,
        "dim": index.dim,
        "table_path": dg.MetadataValue.path(str(Path(index.uri) / f"{index.table}.lance")),
        "lance_version": index.version,
        "lance_tag": index.tag,
        "build_s": dg.MetadataValue.float(build_s),
        "embedded_per_s": dg.MetadataValue.float(index.changes["embedded"] / embed_s),
        "embedded": index.changes["embedded"],
        "reused": index.changes["reused"],
        "removed": index.changes["removed"],
        "probe_query": probe["query"],
        "probe_embed_ms": dg.MetadataValue.float(probe["embed_ms"]),
        "probe_search_ms": dg.MetadataValue.float(probe["search_ms"]),
        "probe_top_hit": str(probe["top_hit"]),
    })


@dg.asset(group_name="evaluation", kinds={"lancedb", "mlflow"})
def rag_eval(context: dg.AssetExecutionContext, config: RagEvalConfig, rag_index: rag.RagIndex,
             exported_model: ExportedModel, settings: SettingsResource, serving: ServingResource,
             tracking: TrackingResource) -> dg.Output[dict]:
    """Retrieval (recall@k, MRR) and the exported model's RAG answers (ragas, unsupported claims), with 95% CIs."""
    from llm_assets.evaluation import rag_answers

    if config.judge_url and not config.judge_model:
        raise ValueError(f"rag_eval: judge_url {config.judge_url!r} is set but judge_model is empty; name the "
                         "judge's model")
    retrieval = rag.evaluate_retrieval(rag.open_index(rag_index), config.retrieval_questions, config.ks,
                                       config.seed)
    context.log.info(f"retrieval on {len(retrieval.questions)} questions: "
                     f"{ {k: round(v['value'], 3) for k, v in retrieval.metrics.items()} }")
    if problem := _tokenizer_problem(context, exported_model):
        answers, judge_url = rag_answers.unanswered(problem), config.judge_url or "not asked"
    else:
        with serving.temporary_backend(exported_model.path, name="rag_eval") as (url, model_id):
            own = f"the evaluated model itself, {rag_answers.context_window(exported_model.path)}-token window"
            judge = rag_answers.Judge(config.judge_url or url, config.judge_model or model_id, config.judge_api_key,
                                      config.judge_timeout_s, config.judge_max_failures,
                                      note="" if config.judge_url else own)
            answers = rag_answers.evaluate_answers(
                retrieval, exported_model.path, url, model_id, judge, questions=config.rag_questions,
                context_passages=config.context_passages, max_tokens=config.max_tokens,
                support_threshold=config.support_threshold, timeout_s=config.answer_timeout_s, seed=config.seed)
        judge_url = judge.base_url
    metrics = {**retrieval.metrics, **answers["metrics"]}
    for name, m in metrics.items():
        if "missing" in m:
            context.log.warning(f"rag_{name}: missing: {m['missing']}")

    path = settings.path("reports", "rag", f"{exported_model.registered_name}-v{exported_model.version}.json")
    path.write_text(json.dumps({
        "model": {"registered_name": exported_model.registered_name, "version": exported_model.version,
                  "path": exported_model.path},
        "index": dataclasses.asdict(rag_index), "config": config.model_dump(), "judge": judge_url,
        "metrics": metrics, "samples": answers["samples"], "records": answers["records"]}, indent=1))
    client = tracking.client()
    values = {f"rag_{name}": m["value"] for name, m in metrics.items() if "value" in m}
    for name, value in values.items():
        client.log_metric(exported_model.mlflow_run_id, name, value)
    client.log_artifact(exported_model.mlflow_run_id, str(path), artifact_path="rag")
    return dg.Output(
        {"metrics": metrics, "samples": answers["samples"], "data_commit": rag_index.data_commit,
         "index_version": rag_index.version, "model_version": exported_model.version, "report_path": str(path)},
        metadata={
            **{k: dg.MetadataValue.float(float(v)) for k, v in values.items()},
            "metrics": dg.MetadataValue.md(rag.metrics_markdown(metrics)),
            "missing": dg.MetadataValue.json({k: m["missing"] for k, m in metrics.items() if "missing" in m}),
            "examples": dg.MetadataValue.md(rag_answers.examples_markdown(answers["records"], retrieval.ranks)),
            "retrieval_questions": len(retrieval.questions),
            "rag_questions": answers["samples"]["questions"],
            "answered": answers["samples"]["answered"],
            "judge": judge_url,
            "data_commit": rag_index.data_commit,
            "index_version": rag_index.version,
            "report": dg.MetadataValue.path(str(path)),
            "model_version": exported_model.version,
            "mlflow_run_id": exported_model.mlflow_run_id,
        },
    )


# ---------------------------------------------------------------- resource benchmark


class ResourceBenchmarkConfig(dg.Config):
    """Used by: resource_benchmark. Each concurrency level sends `rounds` × concurrency streaming requests
    (so every client slot stays busy); the in-process precisions run the concurrency-1 level's prompts."""

    concurrency: list[int] = [1, 4, 16]
    rounds: int = 2
    max_tokens: int = 16
    in_process: list[str] = ["fp32", "int8"]
    """Precisions also measured with `generate` in a fresh process at concurrency 1: int8 (the deployment's
    dynamic quantization) only this way, since `transformers serve` loads Hugging Face weights only."""
    timeout_s: float = 300.0
    """Per request (served) and per in-process run."""


@dg.asset(group_name="evaluation", kinds={"pytorch", "mlflow"})
def resource_benchmark(context: dg.AssetExecutionContext, config: ResourceBenchmarkConfig,
                       exported_model: ExportedModel, serving: ServingResource, settings: SettingsResource,
                       tracking: TrackingResource) -> dg.Output[dict]:
    """Latency to first token and full answer, tokens/s per concurrency, peak memory and size on disk of the
    exported model, per precision."""
    import os

    from llm_assets.deployment import processes
    from llm_assets.evaluation import resource_bench as bench

    if unknown := set(config.in_process) - set(bench.PRECISIONS):
        raise ValueError(f"resource_benchmark in_process: unknown precisions {sorted(unknown)}; "
                         f"use {bench.PRECISIONS}")
    if problem := _tokenizer_problem(context, exported_model):
        return dg.Output({"missing": problem, "model_version": exported_model.version},
                         metadata={"missing": problem, "model_version": exported_model.version})
    name = f"{exported_model.registered_name}-v{exported_model.version}"
    out_dir = settings.dir("reports", "bench")
    load_avg = os.getloadavg()[0]  # other work on the machine skews every figure here
    with serving.temporary_backend(exported_model.path, name="resource_benchmark") as (url, model_id):
        pid = processes.read(Path(serving.run_dir) / "resource_benchmark", "backend").pid
        context.log.info(f"benchmarking {name} on the {serving.backend} backend (pid {pid}) at concurrency "
                         f"{config.concurrency}, {config.rounds} rounds of {config.max_tokens} tokens")
        rows = [bench.bench_served(url, model_id, pid, exported_model.path, concurrency=config.concurrency,
                                   rounds=config.rounds, max_tokens=config.max_tokens, timeout=config.timeout_s,
                                   log=context.log.info)]
    for precision in config.in_process:
        rows.append(bench.bench_in_process(exported_model.path, precision, bench.cycle(bench.PROMPTS, config.rounds),
                                           max_tokens=config.max_tokens, work_dir=out_dir,
                                           timeout=config.timeout_s))
        context.log.info(f"{precision} in-process: {rows[-1]['levels'][0]['tokens_per_s']:.1f} tokens/s, "
                         f"peak RSS {rows[-1]['peak_rss_mb']:.0f} MB")

    values = bench.flat_metrics(rows)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"model": {"registered_name": exported_model.registered_name,
                                          "version": exported_model.version, "path": exported_model.path},
                                "backend": serving.backend, "cpus": os.cpu_count(), "load_avg_1m": load_avg,
                                "config": config.model_dump(), "rows": rows}, indent=2))
    plot = bench.throughput_plot(rows, out_dir / f"{name}.png", title=name)
    client = tracking.client()
    for key, value in values.items():
        client.log_metric(exported_model.mlflow_run_id, f"bench_{key}", value)
    for artifact in (path, plot):
        client.log_artifact(exported_model.mlflow_run_id, str(artifact), artifact_path="bench")
    gpu = rows[0]["gpu_memory_mb"]
    return dg.Output(
        {**values, "rows": rows, "report_path": str(path), "model_version": exported_model.version},
        metadata={
            **{k: dg.MetadataValue.float(v) for k, v in values.items()},
            "results": dg.MetadataValue.md(bench.table_md(rows)),
            "throughput": dg.MetadataValue.md(image_markdown(plot, "tokens/s by concurrency")),
            "requests": sum(lv["n"] for row in rows for lv in row["levels"]),
            "gpu_memory": "no GPU (nvidia-smi absent or failed)" if gpu is None else f"{gpu:.0f} MB",
            "int8": "measured in-process (generate, concurrency 1): transformers serve cannot load the "
                    "dynamic-int8 weights; fp32 in-process is its like-for-like baseline",
            "backend": serving.backend,
            "cpus": os.cpu_count(),
            "load_avg_1m": dg.MetadataValue.float(load_avg),
            "report": dg.MetadataValue.path(str(path)),
            "plot": dg.MetadataValue.path(str(plot)),
            "model_version": exported_model.version,
            "mlflow_run_id": exported_model.mlflow_run_id,
        },
    )


# ---------------------------------------------------------------- red teaming and counterfactual bias


class RedTeamConfig(dg.Config):
    """Used by: red_team_report. Our attack set (evaluation/red_team_attacks.yaml) and garak's probes
    (see evaluation/red_team.py); a rate is the share of attacks the model failed."""

    max_tokens: int = 16
    temperature: float = 0.0
    toxicity_threshold: float = 0.5
    concurrency: int = 4
    request_timeout_s: float = 60.0
    seed: int = 0
    """Draws the run's canary and secret."""
    garak_probes: list[str] = list(red_team.GARAK_PROBES)
    """garak probes (module.Class) whose detectors need no download; empty: garak is not run."""
    garak_prompt_cap: int = 8
    """Prompts per probe (garak's soft_probe_prompt_cap), one generation each."""
    garak_python: str = ""
    """An interpreter that has garak 0.17; empty: the venv that `python -m llm_assets.evaluation.red_team
    install-garak` makes under the llmops cache."""
    garak_install: bool = False
    """Make that venv when it is missing (about 2 GB from PyPI, several minutes); otherwise garak's probes
    are reported missing with the command that installs it."""
    garak_timeout_s: float = 300.0


@dg.asset(group_name="evaluation", kinds={"garak", "mlflow"})
def red_team_report(context: dg.AssetExecutionContext, config: RedTeamConfig, exported_model: ExportedModel,
                    serving: ServingResource, settings: SettingsResource,
                    tracking: TrackingResource) -> dg.Output[dict]:
    """Failure rates (95% Wilson CIs) of the exported model's endpoint under prompt injection, jailbreaks, PII
    extraction, system-prompt leaks and garak probes."""
    name = f"{exported_model.registered_name}-v{exported_model.version}"
    out_dir = settings.dir("reports", "redteam")
    canary, secret = red_team.run_tokens(config.seed)
    attacks = red_team.load_attacks(canary, secret)
    if problem := _tokenizer_problem(context, exported_model):
        results, python, why = [], None, problem
        categories = {k: {"missing": problem} for k in [*dict.fromkeys(a.category for a in attacks),
                                                        *(f"garak.{p}" for p in config.garak_probes)]}
    else:
        python, why = (red_team.resolve_garak(config.garak_python, settings.cache(), config.garak_install,
                                              context.log.info) if config.garak_probes else (None, ""))
        fit = red_team.ContextFit(exported_model.path)
        with serving.temporary_backend(exported_model.path, name="red_team") as (backend_url, model_id), \
                red_team.guarded_gateway(backend_url, model_id, exported_model.path,
                                         Path(serving.run_dir) / "red_team",
                                         model_name=exported_model.registered_name) as url:
            context.log.info(f"{len(attacks)} attacks against {name} at {url} (context {fit.context} tokens)")
            results = red_team.run_attacks(
                attacks, url, exported_model.registered_name, fit, canary=canary, secret=secret,
                max_tokens=config.max_tokens, temperature=config.temperature,
                toxicity_threshold=config.toxicity_threshold, concurrency=config.concurrency,
                timeout_s=config.request_timeout_s)
            garak = {}
            if config.garak_probes:
                context.log.info(f"garak ({python or why}) probes {config.garak_probes}")
                garak = red_team.run_garak(python, url, exported_model.registered_name, config.garak_probes,
                                           out_dir / f"{name}-garak", fit=fit, max_tokens=config.max_tokens,
                                           prompt_cap=config.garak_prompt_cap, seed=config.seed,
                                           timeout_s=config.garak_timeout_s, why_missing=why)
        categories = {**red_team.category_rates(results), **garak}
    missing = {k: e["missing"] for k, e in categories.items() if "missing" in e}
    for k, reason in missing.items():
        context.log.warning(f"redteam {k}: missing: {reason}")

    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({
        "model": {"registered_name": exported_model.registered_name, "version": exported_model.version,
                  "path": exported_model.path},
        "config": config.model_dump(), "canary": canary, "secret": secret, "categories": categories,
        "attacks": [{"id": r.attack.id, "system": r.attack.system, "user": r.attack.user, "output": r.output,
                     "hits": r.hits, "error": r.error, "truncated": r.truncated} for r in results]}, indent=1))
    plot = red_team.rates_plot(categories, out_dir / f"{name}.png", title=f"red team: {name}")
    values = {f"redteam_{k}_rate": e["rate"] for k, e in categories.items() if "rate" in e}
    client = tracking.client()
    for key, value in values.items():
        client.log_metric(exported_model.mlflow_run_id, key, value)
    for artifact in (path, plot):
        client.log_artifact(exported_model.mlflow_run_id, str(artifact), artifact_path="redteam")
    return dg.Output(
        {"categories": categories, "report_path": str(path), "model_version": exported_model.version},
        metadata={
            **{k: dg.MetadataValue.float(v) for k, v in values.items()},
            **{f"redteam_{k}_n": dg.MetadataValue.int(e["n"]) for k, e in categories.items() if "n" in e},
            "rates": dg.MetadataValue.md(red_team.rates_table_md(categories)),
            "plot": dg.MetadataValue.md(image_markdown(plot, "failure rate by category")),
            "missing": dg.MetadataValue.json(missing),
            "examples": dg.MetadataValue.md(red_team.examples_md(results)),
            "attacks": len(attacks),
            "garak": str(python) if python else (why or "not run (no garak_probes)"),
            "report": dg.MetadataValue.path(str(path)),
            "model_version": exported_model.version,
            "mlflow_run_id": exported_model.mlflow_run_id,
        },
    )


class BiasConfig(dg.Config):
    """Used by: bias_report. Counterfactual prompt sets (see evaluation/bias_eval.py)."""

    groups: dict[str, list[str]] = bias_eval.DEFAULT_GROUPS
    """Group -> terms, aligned by position: term i of each group is a counterfactual of the others'."""
    templates: list[list[str]] = bias_eval.DEFAULT_TEMPLATES
    """[prefix with {term}, continuation]: the prefix prompts the generations, the continuation's
    log-likelihood is compared."""
    samples_per_prompt: int = 1
    max_new_tokens: int = 24
    temperature: float = 1.0
    top_k: int = 50
    toxicity_threshold: float = 0.5
    seed: int = 0
    threads: int = 1
    """torch threads: 1 suits the demo's tiny model (see bias_eval.torch_threads); more for a large one."""


@dg.asset(group_name="evaluation", kinds={"pytorch", "mlflow"})
def bias_report(context: dg.AssetExecutionContext, config: BiasConfig, exported_model: ExportedModel,
                settings: SettingsResource, tracking: TrackingResource) -> dg.Output[dict]:
    """Counterfactual bias of the exported model: toxicity and continuation log-likelihood per demographic
    group when only the group's term changes, and the largest gap."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if problem := _tokenizer_problem(context, exported_model):
        return dg.Output({"missing": problem, "groups": {}, "gaps": {}, "model_version": exported_model.version},
                         metadata={"missing": problem, "model_version": exported_model.version})
    name = f"{exported_model.registered_name}-v{exported_model.version}"
    tokenizer = AutoTokenizer.from_pretrained(exported_model.path)
    model = AutoModelForCausalLM.from_pretrained(exported_model.path, dtype=torch.float32)
    with bias_eval.torch_threads(config.threads):
        result = bias_eval.evaluate_bias(
            model, tokenizer, config.templates, config.groups, samples=config.samples_per_prompt,
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_k=config.top_k,
            toxicity_threshold=config.toxicity_threshold, seed=config.seed)
    context.log.info(f"{result['sets']} counterfactual sets over groups {list(config.groups)}: gaps "
                     f"{ {m: round(g['gap'], 4) for m, g in result['gaps'].items()} }")
    out_dir = settings.dir("reports", "bias")
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps({"model": {"registered_name": exported_model.registered_name,
                                          "version": exported_model.version, "path": exported_model.path},
                                "config": config.model_dump(), **result}, indent=1))
    plot = bias_eval.bias_plot(result, out_dir / f"{name}.png", title=f"counterfactual bias: {name}")
    values = bias_eval.flat_metrics(result)
    client = tracking.client()
    for key, value in values.items():
        client.log_metric(exported_model.mlflow_run_id, key, value)
    for artifact in (path, plot):
        client.log_artifact(exported_model.mlflow_run_id, str(artifact), artifact_path="bias")
    examples = "\n\n".join(" / ".join(f"**{g}** {p!r} → {ex['generations'][g]!r}" for g, p in ex["prompts"].items())
                           for ex in result["examples"])
    return dg.Output(
        {"groups": result["groups"], "gaps": result["gaps"], "sets": result["sets"], "report_path": str(path),
         "model_version": exported_model.version},
        metadata={
            **{k: dg.MetadataValue.float(v) for k, v in values.items()},
            "bias": dg.MetadataValue.md(bias_eval.tables_md(result)),
            "plot": dg.MetadataValue.md(image_markdown(plot, "per-group means")),
            "examples": dg.MetadataValue.md(examples or "-"),
            "sets": result["sets"],
            "generations_per_group": result["sets"] * config.samples_per_prompt,
            "report": dg.MetadataValue.path(str(path)),
            "model_version": exported_model.version,
            "mlflow_run_id": exported_model.mlflow_run_id,
        },
    )
