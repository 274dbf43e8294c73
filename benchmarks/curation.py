"""Curation throughput: llmops' clean → Gopher filters → exact + MinHash dedup on Spark, against datatrove.

Measured: documents per second through the whole curation of the same real corpus, both in one run.

- ours (candidate): `ingest.read_source` on the JSONL → `cleaning.clean_documents` → `filters.apply_filters`
  (Gopher quality + Gopher repetition) → `dedup.deduplicate` (exact, then MinHash LSH and connected
  components) → the kept documents written as JSON, on Spark `local[*]` with `SparkResource`'s
  default conf. The clock starts before the SparkSession is created, so JVM start-up counts.
- datatrove 0.10.1 (baseline), in its own interpreter: `/tmp/dtvenv` if it has what the JSONL and
  MinHash steps need (orjson, xxhash, tokenizers), else a venv this script makes once under the cache
  dir (datatrove is not a project dependency). Stages: JsonlReader → GopherQualityFilter →
  GopherRepetitionFilter → exact dedup → JsonlWriter → MinhashDedupSignature; MinhashDedupBuckets;
  MinhashDedupCluster; JsonlReader → MinhashDedupFilter → JsonlWriter, each a
  `LocalPipelineExecutor(workers=1)` (its multi-worker forkserver mode hangs here) with one task,
  except Buckets, which needs one task per bucket (14, run one after another). The clock starts
  before the first stage, after datatrove is imported.

The same on both sides:
- the corpus (`benchmarks/corpus.py`): docs and docstrings of this venv's packages, each a fixed point
  of `cleaning.clean_text`, so our cleaning (ftfy, NFC, whitespace) does its work and hands the filters
  the very text datatrove reads. Cleaning's own quality rules are set so they never fire, and no
  language is filtered (`languages=()`: datatrove has no offline language identifier here), though
  lingua still labels every document, as it does in `cleaned_corpus`.
- the Gopher thresholds: `FilterConfig.software_docs()` (`cleaned_corpus`' default), passed to
  datatrove's two filters too. The papers' thresholds drop 87% of docstrings.
- exact duplicates: one per sha256 of the text lowercased with whitespace collapsed; datatrove's side
  is a LambdaFilter with a seen-set (one pass; its three-stage ExactDedup would only slow the baseline).
- MinHash: 5-word shingles, 14 bands × 8 rows (datatrove's `MinhashConfig()`). datatrove calls two
  documents duplicates when any band matches and checks nothing more; `threshold=0.0` gives ours the
  same rule.

What still differs: shingles (ours: `\\w+` words of the lowercased text; datatrove: spaCy tokens of
`simplify_text`, numbers mapped to 0, punctuation and diacritics removed), the hash family (blake2b
+ salted fmix64 vs xxhash64 + (a·x+b) mod 2^61-1), Gopher's tokenizer (a regex port of spaCy's rules
vs spaCy), and which member of a near-duplicate cluster is kept (the smallest content hash vs
datatrove's union-find root). For exact duplicates both keep the same copy: the corpus is sorted in
the order llmops prefers, so datatrove's first-seen copy is ours.

Measured on 2 cores shared with other work, 30,000 documents: ours 154.2 s (194.6 docs/s), datatrove
170.6 s (175.9 docs/s), `ratio 1.106`. Kept sets: 0.9986 Jaccard after the filters and exact dedup,
0.9587 after MinHash (the disagreements are pairs of Jaccard 0.5-0.75, where two independent LSH hash
families flip differently). Where our time goes (`--stages`, one such run: 91.5 s in all): start-up
4.6 s, read_source 8.6, clean_documents 48.6 (lingua is 65 of its 85 CPU-seconds), apply_filters 9.2,
deduplicate 19.0, write 1.5.

    .venv/bin/python benchmarks/curation.py                  # 30,000 documents: ~5.5 min, ~8 the first time
    .venv/bin/python benchmarks/curation.py --docs 2000      # a quick trial (a hash-ordered sample)
    .venv/bin/python benchmarks/curation.py --stages         # also time our steps one by one

Prints a table (documents in, kept, docs/s, seconds), what each stage kept, the overlap of the kept
sets by document id, and `ratio <ours docs/s ÷ datatrove docs/s>` as its last line.
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/tokenize.py would shadow the stdlib `tokenize` (which inspect imports): search this folder last.
HERE = Path(__file__).resolve().parent
sys.path = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

import argparse
import dataclasses
import glob
import json
import os
import shutil
import subprocess
import time

from corpus import DEFAULT_DOCS, corpus_path, default_cache  # noqa: E402

from llm_assets.data.filters import FilterConfig  # noqa: E402

NGRAM, BUCKETS, HASHES_PER_BUCKET = 5, 14, 8  # datatrove's MinhashConfig() defaults
# The Gopher groups of cleaned_corpus' default preset (C4 and FineWeb off), given to datatrove as well:
# the paper thresholds drop 87% of docstrings (mostly `gopher_below_alpha_threshold`: `(`, `=`, `.`
# tokens of code samples count as words without a letter).
FILTERS = FilterConfig.software_docs()
SHARED_DTVENV = Path("/tmp/dtvenv")

# The baseline, run by datatrove's interpreter: argv[1] is a JSON object (paths, MinHash and Gopher settings);
# prints one JSON line with its seconds.
DATATROVE_SCRIPT = r'''
import hashlib, json, sys, time
args = json.loads(sys.argv[1])
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.pipeline.filters import GopherQualityFilter, GopherRepetitionFilter, LambdaFilter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.writers import JsonlWriter

work = args["work"]
config = MinhashConfig(n_grams=args["ngram"], num_buckets=args["buckets"], hashes_per_bucket=args["hashes"])
quality, repetition = args["gopher_quality"], args["gopher_repetition"]
seen = set()

def first_copy(doc):
    """Exact dedup: the first document with each normalized text (lowercase, whitespace collapsed)."""
    key = hashlib.sha256(" ".join(doc.text.lower().split()).encode()).digest()
    if key in seen:
        return False
    seen.add(key)
    return True

def executor(pipeline, name, tasks=1):
    return LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=1, logging_dir=f"{work}/logs/{name}")

start = time.perf_counter()
stages = [
    executor([JsonlReader(args["corpus"]), GopherQualityFilter(**quality),
              GopherRepetitionFilter(**repetition), LambdaFilter(first_copy),
              JsonlWriter(f"{work}/filtered", compression=None),
              MinhashDedupSignature(f"{work}/signatures", config=config)], "signatures"),
    executor([MinhashDedupBuckets(f"{work}/signatures", f"{work}/buckets", config=config)], "buckets",
             tasks=args["buckets"]),
    executor([MinhashDedupCluster(f"{work}/buckets", f"{work}/remove_ids", config=config)], "clusters"),
    executor([JsonlReader(f"{work}/filtered"), MinhashDedupFilter(f"{work}/remove_ids"),
              JsonlWriter(f"{work}/output", compression=None)], "filter"),
]
seconds = []
for stage in stages:
    t = time.perf_counter()
    stage.run()
    seconds.append(time.perf_counter() - t)
print(json.dumps({"seconds": time.perf_counter() - start, "stage_seconds": seconds}))
'''


# What the steps above need beyond `pip install datatrove spacy`: JsonlReader/Writer orjson, MinHash xxhash
# and regex, and the package datatrove.pipeline.dedup imports its exact-substring steps, which need tokenizers.
DATATROVE_PACKAGES = ["datatrove==0.10.1", "spacy", "orjson", "xxhash<4", "regex", "tokenizers"]
_IMPORT_CHECK = "import spacy, orjson, xxhash, datatrove.pipeline.dedup.minhash, datatrove.pipeline.filters"


def datatrove_python(cache: Path) -> Path:
    """An interpreter with datatrove, spaCy and the extras above: /tmp/dtvenv if it has them all, else a
    venv made once under the cache."""
    for venv in (SHARED_DTVENV, cache / "dtvenv"):
        python = venv / "bin" / "python"
        if python.exists() and subprocess.run([python, "-c", _IMPORT_CHECK],
                                              capture_output=True).returncode == 0:
            return python
    venv = cache / "dtvenv"
    print(f"making {venv} with datatrove and spacy ...", file=sys.stderr, flush=True)
    subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
    subprocess.run([venv / "bin" / "pip", "install", "-q", *DATATROVE_PACKAGES], check=True)
    return venv / "bin" / "python"


def datatrove_filter_kwargs() -> dict:
    """FILTERS' Gopher thresholds as datatrove's GopherQualityFilter / GopherRepetitionFilter keywords."""
    quality = dataclasses.asdict(FILTERS.gopher_quality_rules)
    quality["max_non_alpha_words_ratio"] = quality.pop("min_alpha_words_ratio")  # datatrove's name for it
    quality["stop_words"] = list(quality["stop_words"])
    return {"gopher_quality": quality, "gopher_repetition": dataclasses.asdict(FILTERS.gopher_repetition_rules)}


def jsonl_ids(pattern: str) -> list[str]:
    ids = []
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            ids.extend(json.loads(line)["id"] for line in f if line.strip())
    return ids


def run_datatrove(python: Path, corpus: Path, work: Path) -> dict:
    """Run the baseline in its own process; its seconds, and the ids it kept after exact and near dedup."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    args = {"corpus": str(corpus), "work": str(work), "ngram": NGRAM, "buckets": BUCKETS, "hashes": HASHES_PER_BUCKET,
            **datatrove_filter_kwargs()}
    with (work / "datatrove.log").open("w") as log:
        done = subprocess.run([python, "-c", DATATROVE_SCRIPT, json.dumps(args)], stdout=subprocess.PIPE,
                              stderr=log, text=True, cwd=work)
    if done.returncode != 0:
        raise RuntimeError(f"datatrove exited {done.returncode}; its log: {work / 'datatrove.log'}")
    timing = json.loads(done.stdout.strip().splitlines()[-1])
    return {**timing, "after_exact": jsonl_ids(f"{work}/filtered/*.jsonl"), "kept": jsonl_ids(f"{work}/output/*.jsonl")}


def run_ours(corpus: Path, work: Path, stages: bool = False) -> dict:
    """Our curation on Spark local[*], timed from before the session starts to the kept set written.

    `stages`: count each step's output as it is made, to time the steps one by one (Spark is lazy:
    otherwise the work of reading, cleaning and filtering happens inside deduplicate's first job).
    """
    from pyspark.sql import functions as F

    from llm_assets.data import cleaning, dedup, filters, ingest
    from resources.spark import SparkResource, build_session

    shutil.rmtree(work, ignore_errors=True)
    inf = float("inf")
    # Cleaning's own rules off (only `empty` can fire): the filters under test are the Gopher ones.
    no_rules = cleaning.QualityRules(min_words=0, max_words=1 << 62, max_symbol_ratio=inf, min_alpha_word_ratio=0.0,
                                     max_mean_word_length=inf, max_repeated_line_ratio=inf)
    params = dedup.MinHashParams(ngram=NGRAM, bands=BUCKETS, rows=HASHES_PER_BUCKET, threshold=0.0)
    resource = SparkResource()
    laps = []

    def lap(name: str, df=None) -> None:
        if stages and df is not None:
            df.count()
        laps.append((name, time.perf_counter()))

    start = time.perf_counter()
    spark = build_session("local[*]", resource.conf, str(work / "spark"))
    lap("Spark start-up")
    raw = ingest.read_source(spark, str(corpus))
    lap("read_source", raw.kept)
    cleaned = cleaning.clean_documents(raw.kept, no_rules, languages=())
    lap("clean_documents", cleaned.kept)
    filtered = filters.apply_filters(cleaned.kept, FILTERS)
    lap("apply_filters", filtered.kept)
    result = dedup.deduplicate(filtered.kept, params)
    lap("deduplicate")
    record_id = F.expr("substr(source, length(source_file) + 2)")  # source is `<file>#<id>`
    result.kept.select(record_id.alias("id"), "text").write.json(str(work / "output"))
    lap("write kept")
    seconds = time.perf_counter() - start

    # Not timed: what each stage kept, for the overlap with datatrove.
    rejected = {r["rule"]: r["count"] for r in result.rejected.groupBy("rule").count().collect()}
    exact = {r["source"] for r in result.rejected.where(F.col("rule") == "exact_duplicate").select("source").collect()}
    after_filters = filtered.kept.select("source", record_id.alias("id")).collect()
    times = [t for _, t in laps]
    out = {"seconds": seconds, "laps": [(name, t - prev) for (name, t), prev in zip(laps, [start, *times])],
           "kept": jsonl_ids(str(work / "output" / "*.json")),
           "after_exact": [r["id"] for r in after_filters if r["source"] not in exact],
           "after_filters": len(after_filters), "clusters": result.clusters, "iterations": result.iterations,
           "rejected": rejected}
    spark.stop()
    return out


def overlap(ours: list[str], theirs: list[str]) -> tuple[float, int, int, int]:
    a, b = set(ours), set(theirs)
    return len(a & b) / max(len(a | b), 1), len(a & b), len(a - b), len(b - a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS, help=f"corpus size (default {DEFAULT_DOCS:,})")
    parser.add_argument("--cache", type=Path, default=None, help="corpus and scratch dir (default <LLMOPS_HOME>/bench)")
    parser.add_argument("--stages", action="store_true",
                        help="time our steps one by one (counts each step's output: a little slower overall)")
    args = parser.parse_args()
    cache = (args.cache or default_cache()).resolve()

    corpus = corpus_path(cache, args.docs)
    with corpus.open(encoding="utf-8") as f:
        docs_in = sum(1 for _ in f)
    python = datatrove_python(cache)
    print(f"corpus: {corpus} ({docs_in:,} documents); datatrove: {python}", flush=True)

    theirs = run_datatrove(python, corpus, cache / "datatrove")
    ours = run_ours(corpus, cache / "ours", args.stages)

    rate = {name: docs_in / r["seconds"] for name, r in (("ours", ours), ("datatrove", theirs))}
    print(f"\n{'pipeline':<34}{'docs in':>9}{'kept':>8}{'docs/s':>9}{'seconds':>9}")
    print(f"{f'ours (Spark local[*], {os.cpu_count()} cores)':<34}{docs_in:>9,}{len(ours['kept']):>8,}{rate['ours']:>9.1f}"
          f"{ours['seconds']:>9.1f}")
    print(f"{'datatrove 0.10.1 (workers=1)':<34}{docs_in:>9,}{len(theirs['kept']):>8,}{rate['datatrove']:>9.1f}"
          f"{theirs['seconds']:>9.1f}")
    stages = ", ".join(f"{n} {s:.1f}" for n, s in zip(("signatures", "buckets", "clusters", "filter"),
                                                        theirs["stage_seconds"]))
    shown = ours["laps"] if args.stages else ours["laps"][:1]
    steps = ", ".join(f"{name} {s:.1f}" for name, s in shown)
    print(f"\nours: {ours['after_filters']:,} pass the Gopher filters, {len(ours['after_exact']):,} after exact dedup; "
          f"removed {ours['rejected']}; {ours['clusters']:,} near-duplicate clusters "
          f"({ours['iterations']} label propagation rounds); seconds: {steps}")
    print(f"datatrove: {len(theirs['after_exact']):,} after the Gopher filters and exact dedup; stage seconds: {stages}")
    for label, key in (("after filters + exact dedup", "after_exact"), ("kept (after MinHash dedup)", "kept")):
        jac, both, only_ours, only_theirs = overlap(ours[key], theirs[key])
        print(f"overlap {label}: |ours ∩ datatrove| / |ours ∪ datatrove| = {jac:.4f} "
              f"({both:,} both, {only_ours:,} only ours, {only_theirs:,} only datatrove)")
    print(f"ratio {rate['ours'] / rate['datatrove']:.3f}")


if __name__ == "__main__":
    main()
