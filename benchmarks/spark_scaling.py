"""Spark scaling: the curation pipeline on local[1], local[2] and a 2-worker standalone cluster, same corpus.

Measured: documents per second through the curation of `curation.py` (read_source → clean_documents →
apply_filters → deduplicate → kept documents written as JSON), with the same settings as there
(Gopher thresholds of `FilterConfig.software_docs()`, cleaning's own rules off, MinHash 14 × 8). Each
master runs in its own process (a process holds one SparkContext) and its own clock, which starts once
the session is up: start-up is shown apart, it does not scale with cores. The cluster is a master and two
workers of 1 core and 1 GiB each, started here from the pyspark wheel's `spark-class` on 127.0.0.1; its
time includes shipping tasks and shuffles between the three JVMs. All three keep the same documents.

    .venv/bin/python benchmarks/spark_scaling.py                           # 3,000 documents, 2 rounds: ~8 min
    .venv/bin/python benchmarks/spark_scaling.py --docs 1000 --repeats 1   # a quick trial

Each round runs all three, one after another; the fastest pipeline of each over `--repeats` rounds counts
(other work on a shared machine slows single runs). Prints a table (master, cores, start-up s, pipeline s,
docs/s, kept documents, every round's seconds), whether all three kept the same documents, then
`ratio <2-worker docs/s ÷ local[1] docs/s>` as its last line. On a 2-core machine the ceiling is about 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/tokenize.py would shadow the stdlib `tokenize` (which inspect imports): search this folder last.
HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

from corpus import corpus_path, default_cache  # noqa: E402

REPO = HERE.parent
WORKERS, WORKER_CORES, WORKER_MEMORY = 2, 1, "1g"
CLUSTER_CONF = {"spark.executor.memory": "768m", "spark.executor.cores": str(WORKER_CORES),
                "spark.cores.max": str(WORKERS * WORKER_CORES)}


def curate(master: str, corpus: Path, work: Path) -> dict:
    """One curation run on `master`; seconds for start-up and for the pipeline, and the kept doc ids."""
    from pyspark.sql import functions as F

    from curation import BUCKETS, FILTERS, HASHES_PER_BUCKET, NGRAM, jsonl_ids
    from llm_assets.data import cleaning, dedup, filters, ingest
    from resources.spark import SparkResource, build_session

    shutil.rmtree(work / "output", ignore_errors=True)
    inf = float("inf")
    no_rules = cleaning.QualityRules(min_words=0, max_words=1 << 62, max_symbol_ratio=inf, min_alpha_word_ratio=0.0,
                                     max_mean_word_length=inf, max_repeated_line_ratio=inf)
    params = dedup.MinHashParams(ngram=NGRAM, bands=BUCKETS, rows=HASHES_PER_BUCKET, threshold=0.0)
    conf = {**SparkResource().conf, **(CLUSTER_CONF if master.startswith("spark://") else {})}
    start = time.perf_counter()
    spark = build_session(master, conf, str(work / "spark"))
    spark.range(1).count()  # executors up (a cluster starts them lazily)
    up = time.perf_counter()
    raw = ingest.read_source(spark, str(corpus))
    cleaned = cleaning.clean_documents(raw.kept, no_rules, languages=())
    filtered = filters.apply_filters(cleaned.kept, FILTERS)
    result = dedup.deduplicate(filtered.kept, params)
    record_id = F.expr("substr(source, length(source_file) + 2)")  # source is `<file>#<id>`
    result.kept.select(record_id.alias("id"), "text").write.json(str(work / "output"))
    done = time.perf_counter()
    spark.stop()
    return {"startup": up - start, "seconds": done - up, "kept": sorted(jsonl_ids(str(work / "output" / "*.json")))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A standalone master and WORKERS workers on 127.0.0.1, each JVM in its own process group."""

    def __init__(self, work: Path):
        import pyspark

        spark_home = Path(pyspark.__file__).parent
        (work / "conf").mkdir(parents=True, exist_ok=True)
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith(("SPARK_", "PYSPARK_"))},
                    "SPARK_HOME": str(spark_home), "SPARK_CONF_DIR": str(work / "conf"), "SPARK_LOCAL_IP": "127.0.0.1",
                    "SPARK_LOG_DIR": str(work / "logs"), "SPARK_LOCAL_DIRS": str(work / "local"),
                    "SPARK_DAEMON_JAVA_OPTS": "-XX:-UsePerfData", "SPARK_DAEMON_MEMORY": "256m", "TMPDIR": str(work)}
        self.work, self.spark_class, self.procs = work, str(spark_home / "bin" / "spark-class"), []
        port, self.ui = _free_port(), _free_port()
        self.url = f"spark://127.0.0.1:{port}"
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                    "--webui-port", str(self.ui))
        for i in range(WORKERS):
            self._start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores",
                        str(WORKER_CORES), "--memory", WORKER_MEMORY, "--webui-port", str(_free_port()),
                        "--work-dir", str(work / f"work{i}"), self.url)
        self._wait_for_workers()

    def _start(self, name: str, main_class: str, *args: str) -> None:
        with open(self.work / f"{name}.log", "wb") as log:
            self.procs.append(subprocess.Popen([self.spark_class, main_class, *args], env=self.env, cwd=self.work,
                                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True))

    def _wait_for_workers(self, timeout: float = 240) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.ui}/json/", timeout=5).json().get("aliveworkers") == WORKERS:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError(f"{WORKERS} workers did not register in {timeout:.0f} s; logs in {self.work}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(30)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def run_one(master: str, corpus: Path, work: Path) -> dict:
    """`curate` in a fresh interpreter (one SparkContext per process); its JSON result."""
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "run.log", "wb") as log:
        done = subprocess.run([sys.executable, __file__, "--one", master, "--corpus", str(corpus), "--work",
                               str(work)], cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"curation on {master} exited {done.returncode}; its log: {work / 'run.log'}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=3000, help="corpus size (default 3,000)")
    parser.add_argument("--cache", type=Path, default=None, help="corpus and scratch dir (default <LLMOPS_HOME>/bench)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the three runs; the fastest of each counts")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run on this master, JSON out
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(curate(args.one, args.corpus, args.work)))
        return

    cache = (args.cache or default_cache()).resolve()
    corpus = corpus_path(cache, args.docs)
    with corpus.open(encoding="utf-8") as f:
        docs_in = sum(1 for _ in f)
    work = cache / "spark_scaling"
    shutil.rmtree(work, ignore_errors=True)
    print(f"corpus: {corpus} ({docs_in:,} documents); {os.cpu_count()} cores here", flush=True)

    # Rounds of all three, interleaved, so load from elsewhere on the machine hits each alike; the fastest counts.
    cluster = Cluster(work / "cluster")
    label = f"standalone {WORKERS}×{WORKER_CORES} core"
    runs: dict[str, list[dict]] = {"local[1]": [], "local[2]": [], label: []}
    try:
        for round_ in range(args.repeats):
            for name, master, folder in (("local[1]", "local[1]", "local1"), ("local[2]", "local[2]", "local2"),
                                         (label, cluster.url, "standalone")):
                runs[name].append(run_one(master, corpus, work / f"{folder}-{round_}"))
    finally:
        cluster.stop()
    results = {name: min(rs, key=lambda r: r["seconds"]) for name, rs in runs.items()}

    print(f"\n{'master':<26}{'cores':>6}{'start-up s':>12}{'pipeline s':>12}{'docs/s':>9}{'kept':>8}   all rounds, s")
    for (name, r), cores in zip(results.items(), (1, 2, WORKERS * WORKER_CORES)):
        rounds = " ".join(f"{x['seconds']:.1f}" for x in runs[name])
        print(f"{name:<26}{cores:>6}{r['startup']:>12.1f}{r['seconds']:>12.1f}{docs_in / r['seconds']:>9.1f}"
              f"{len(r['kept']):>8,}   {rounds}")
    kept = {name: r["kept"] for name, r in results.items()}
    same = all(k == kept["local[1]"] for k in kept.values())
    print(f"\nsame kept documents on all three: {same}")
    print(f"ratio {results['local[1]']['seconds'] / results[label]['seconds']:.3f}")


if __name__ == "__main__":
    main()
