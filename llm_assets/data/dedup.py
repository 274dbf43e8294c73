"""Exact and near-duplicate removal on Spark: a hash of normalized text, then MinHash LSH.

1. Exact: sha256 of the text lowercased with whitespace collapsed; one document per hash is kept.
2. Near: MinHash signatures over word n-gram shingles (numpy, in a pandas UDF), split into
   `bands` × `rows`; documents sharing a band bucket are candidate pairs, kept as edges when the
   estimated Jaccard similarity (the share of equal signature slots) reaches `threshold`.
3. Clusters are the connected components of those edges, found on Spark by iterative min-label
   propagation (no graphframes). A node's label is `content_hash|doc_id`, so the label a cluster
   converges to *is* its representative: the document with the smallest content_hash.

Separately, `remove_boilerplate_lines` drops lines (headers, footers, banners) that recur across many
documents, from all of them.

Every choice is a function of the documents alone (never of row order, partitioning or Python's
salted `hash()`): words are hashed with blake2b and the permutations are salts derived from `seed`
with sha256, so any process on any machine computes the same signatures and keeps the same documents.

Defaults: 3-gram shingles, 50 bands × 5 rows = 250 permutations, threshold 0.67. A pair at Jaccard J
becomes a candidate with probability 1 - (1 - J^5)^50: ≈ 0.9993 at 0.67, 0.98 at 0.6, 0.80 at 0.5,
0.11 at 0.3, 5e-4 at 0.1. So nearly every pair above the threshold is compared, and the estimate decides
(standard deviation sqrt(J(1 - J) / 250) ≈ 0.03 near the threshold).

Why 3-grams at 0.67: a copy with a share q of its words substituted keeps about s = (1 - q)^n of its
n-gram shingles, so its Jaccard is s / (2 - s). With 5-grams, 5% substituted words gives 0.63 and 3%
gives 0.75, so the earlier 0.7 threshold (5-grams, 20 × 6) missed about half of the copies with 3-5% of
words changed. With 3-grams, 5% gives 0.75 and 7% gives 0.67. Distinct prose shares almost no 3-grams
(Jaccard < 0.05). A template filled with other content, or a page quoting one paragraph of another,
stays under 0.3. tests/data/test_dedup_quality.py measures recall and precision on a planted corpus of
such documents.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from llm_assets.data.ingest import StepResult, quarantine_rows

EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)  # the signature slot of a text without words
_WORD = re.compile(r"\w+")
_MIX = np.uint64(0x9E3779B97F4A7C15)  # golden-ratio multiplier for combining word hashes
_CHUNK = 4096


@dataclass(frozen=True)
class MinHashParams:
    """Near-duplicate settings: shingle size, LSH bands × rows (= permutations), Jaccard threshold."""

    ngram: int = 3
    bands: int = 50
    rows: int = 5
    threshold: float = 0.67
    seed: int = 42

    @property
    def num_perm(self) -> int:
        return self.bands * self.rows


# ---------------------------------------------------------------- plain MinHash

def normalize_for_hash(text: str) -> str:
    """Lowercase with whitespace runs collapsed: the text exact deduplication compares."""
    return " ".join(text.lower().split())


def _stable_u64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _fmix64(x: np.ndarray) -> np.ndarray:
    """murmur3's 64-bit finalizer: every input bit flips about half the output bits (uint64 wraps)."""
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xFF51AFD7ED558CCD)
    x = x ^ (x >> np.uint64(33))
    x = x * np.uint64(0xC4CEB9FE1A85EC53)
    return x ^ (x >> np.uint64(33))


def permutations(num_perm: int, seed: int) -> np.ndarray:
    """One 64-bit salt per permutation, from sha256 so they never drift; h_i(x) = fmix64(x ^ salt_i).

    (A linear family (a·x + b) mod p with small `a` keeps the order of the inputs and biases the
    estimate; salting a strong mixer does not.)
    """
    return np.array([int.from_bytes(hashlib.sha256(f"llmops-minhash:{seed}:{i}".encode()).digest()[:8], "little")
                     for i in range(num_perm)], dtype=np.uint64)


def shingle_hashes(text: str, ngram: int) -> np.ndarray:
    """The set of 64-bit hashes of the word n-grams of `text` (the whole text if it is shorter)."""
    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(0, dtype=np.uint64)
    uniq, inverse = np.unique(np.array(words, dtype=object), return_inverse=True)
    word_hash = np.fromiter((_stable_u64(w.encode()) for w in uniq), dtype=np.uint64, count=len(uniq))[inverse]
    n = min(ngram, len(words))
    sh = np.zeros(len(words) - n + 1, dtype=np.uint64)
    for k in range(n):  # polynomial combination of n consecutive word hashes; uint64 wraps by design
        sh = sh * _MIX + word_hash[k:k + len(sh)]
    return np.unique(_fmix64(sh))


def minhash_signature(text: str, params: MinHashParams = MinHashParams(),
                      salts: np.ndarray | None = None) -> np.ndarray:
    """`num_perm` minimum hash values of the shingle set (all 2^64 - 1 for a text without words)."""
    salts = salts if salts is not None else permutations(params.num_perm, params.seed)
    sig = np.full(len(salts), EMPTY, dtype=np.uint64)
    x = shingle_hashes(text, params.ngram)
    for start in range(0, len(x), _CHUNK):  # bounded memory for long documents
        np.minimum(sig, _fmix64(x[start:start + _CHUNK, None] ^ salts).min(axis=0), out=sig)
    return sig


def band_hashes(sig: np.ndarray, bands: int, rows: int) -> list[int]:
    """One signed 64-bit bucket id per band: documents sharing one are candidate pairs."""
    return [int.from_bytes(hashlib.blake2b(sig[i * rows:(i + 1) * rows].tobytes(), digest_size=8).digest(),
                           "little", signed=True) for i in range(bands)]


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    return float(np.mean(sig_a == sig_b))


# ---------------------------------------------------------------- on Spark

_SIGNED = T.StructType([
    T.StructField("sig", T.ArrayType(T.LongType())),
    T.StructField("bands", T.ArrayType(T.LongType())),
])


def _signature_udf(params: MinHashParams):
    conf = asdict(params)

    @F.pandas_udf(_SIGNED)
    def signatures(text: pd.Series) -> pd.DataFrame:
        p = MinHashParams(**conf)
        salts = permutations(p.num_perm, p.seed)
        sigs = [minhash_signature(t, p, salts) for t in text]
        # Spark has no unsigned long: the same 64 bits as a signed one (only equality is compared).
        return pd.DataFrame({"sig": [s.view(np.int64) for s in sigs],
                             "bands": [band_hashes(s, p.bands, p.rows) for s in sigs]})

    return signatures


@dataclass
class DedupResult(StepResult):
    """Kept and removed documents; `clusters` counts near-duplicate clusters (two or more documents)."""

    clusters: int = 0
    iterations: int = 0
    cluster_sizes: dict[int, int] = field(default_factory=dict)
    """Cluster size (how many input documents one kept document stands for: itself, its exact copies,
    its near duplicates and their exact copies) -> number of kept documents with that size, size 1
    included. Sizes weighted by counts sum to the input rows, and the counts sum to the kept rows."""


def cluster_sizes_markdown(cluster_sizes: dict[int, int]) -> str:
    """`DedupResult.cluster_sizes` as a Markdown table; sizes over 4 are binned into powers of two (5-8, 9-16, ...)."""
    bins: dict[tuple[int, int], list[int]] = {}
    for size, n in sorted(cluster_sizes.items()):
        hi = size if size <= 4 else 1 << (size - 1).bit_length()
        lo = size if size <= 4 else hi // 2 + 1
        counts = bins.setdefault((lo, hi), [0, 0])
        counts[0] += n
        counts[1] += n * size
    total = sum(d for _, d in bins.values()) or 1
    lines = ["| cluster size | clusters | documents | share of documents |", "|---|---:|---:|---:|"]
    lines += [f"| {lo if lo == hi else f'{lo}-{hi}'} | {n:,} | {d:,} | {d / total:.1%} |"
              for (lo, hi), (n, d) in bins.items()]
    return "\n".join(lines)


def text_hash(text: Column) -> Column:
    """sha256 of the lowercased text with whitespace collapsed (Spark's side of `normalize_for_hash`)."""
    # collapse first, then trim: Spark's trim strips only spaces, not a trailing newline, tab or \r
    return F.sha2(F.trim(F.regexp_replace(F.lower(text), r"\s+", " ")), 256)


def connected_components(edges: DataFrame, max_iterations: int = 50) -> tuple[DataFrame, int]:
    """(node, label) with label = the smallest node id in the node's component, and the rounds used.

    Each round every node takes the smallest label among itself and its neighbours. Labels are
    checkpointed lazily each round (one Spark job per round), so the plan does not grow with them.
    """
    both = edges.select("src", "dst").unionByName(edges.select(F.col("dst").alias("src"), F.col("src").alias("dst")))
    both = both.localCheckpoint(eager=False)
    labels = both.select(F.col("src").alias("node")).distinct().withColumn("label", F.col("node"))
    labels = labels.localCheckpoint(eager=False)
    for i in range(1, max_iterations + 1):
        offered = both.join(labels, both.src == labels.node).select(F.col("dst").alias("node"), "label")
        updated = (labels.unionByName(offered).groupBy("node").agg(F.min("label").alias("label"))
                   .localCheckpoint(eager=False))
        changed = (updated.alias("n").join(labels.alias("o"), "node")
                   .where(F.col("n.label") != F.col("o.label")).count())
        labels = updated
        if changed == 0:
            return labels, i
    raise RuntimeError(f"connected components did not converge in {max_iterations} iterations; "
                       "raise max_iterations (a cluster's diameter bounds the rounds needed)")


def deduplicate(docs: DataFrame, params: MinHashParams = MinHashParams(), max_iterations: int = 50) -> DedupResult:
    """Documents with exact and near duplicates removed; removed ones in quarantine shape, naming the kept id."""
    keyed = (docs.withColumn("text_hash", text_hash(F.col("text")))
             .withColumn("key", F.concat_ws("|", "content_hash", "doc_id")))
    by_text = Window.partitionBy("text_hash").orderBy("key")
    ranked = (keyed.withColumn("rank", F.row_number().over(by_text))
              .withColumn("kept_id", F.first("doc_id").over(by_text))
              .persist())
    exact = ranked.where(F.col("rank") > 1)
    unique = ranked.where(F.col("rank") == 1).drop("rank", "kept_id")

    signed = (unique.select("key", _signature_udf(params)("text").alias("s"))
              .select("key", "s.sig", "s.bands").persist())
    buckets = signed.select("key", F.posexplode("bands").alias("band", "bucket"))
    pairs = (buckets.alias("a").join(buckets.alias("b"), ["band", "bucket"])
             .where(F.col("a.key") < F.col("b.key"))
             .select(F.col("a.key").alias("src"), F.col("b.key").alias("dst")).distinct())
    same = F.aggregate(F.zip_with("sa.sig", "sb.sig", lambda x, y: (x == y).cast("int")), F.lit(0),
                       lambda acc, x: acc + x)
    edges = (pairs.join(signed.alias("sa"), F.col("src") == F.col("sa.key"))
             .join(signed.alias("sb"), F.col("dst") == F.col("sb.key"))
             .select("src", "dst", (same / F.lit(params.num_perm)).alias("jaccard"))
             .where(F.col("jaccard") >= params.threshold))

    labels, iterations = connected_components(edges, max_iterations)
    sizes = labels.groupBy("label").agg(F.count("*").alias("size"))
    clusters = sizes.count()
    copies = ranked.groupBy("text_hash").agg(F.count("*").alias("copies"))
    stands_for = (unique.select("key", "text_hash").join(copies, "text_hash")
                  .join(labels, F.col("key") == F.col("node"), "left")
                  .groupBy(F.coalesce("label", "key").alias("kept")).agg(F.sum("copies").alias("size")))
    cluster_sizes = {r["size"]: r["count"] for r in stands_for.groupBy("size").count().orderBy("size").collect()}
    removed = labels.where(F.col("node") != F.col("label")).join(sizes, "label")
    near = unique.join(removed, unique.key == removed.node).drop("node")
    kept = unique.join(removed, unique.key == removed.node, "left_anti")

    kept_columns = [*docs.columns, "text_hash"]
    rejected = quarantine_rows(
        exact, "deduped_corpus", F.lit("exact_duplicate"),
        F.concat(F.lit("same normalized text as kept doc "), F.col("kept_id")),
    ).unionByName(quarantine_rows(
        near, "deduped_corpus", F.lit("near_duplicate"),
        F.format_string(f"near-duplicate of kept doc %s (MinHash Jaccard >= {params.threshold}, cluster of %d)",
                        F.substring_index("label", "|", -1), "size"),
    ))
    return DedupResult(kept.select(*kept_columns), rejected, (ranked, signed), clusters=clusters,
                       iterations=iterations, cluster_sizes=cluster_sizes)


# ---------------------------------------------------------------- boilerplate lines

@dataclass
class BoilerplateResult:
    """Documents with boilerplate lines removed, and what was removed."""

    docs: DataFrame
    """The input rows with `text` rewritten (and `n_chars`/`n_words` recounted, where present)."""
    lines: int
    """Distinct normalized lines found to be boilerplate."""
    lines_removed: int
    """Line occurrences removed, over all documents."""
    chars_removed: int
    """Characters removed: the lines and their newlines."""
    docs_changed: int
    top_lines: list[tuple[str, int]] = field(default_factory=list)
    """The most widespread boilerplate lines (normalized) with the number of documents holding them."""
    _cached: tuple[DataFrame, ...] = ()

    def release(self) -> None:
        for df in self._cached:
            df.unpersist()


def remove_boilerplate_lines(docs: DataFrame, min_documents: int = 10, min_chars: int = 10,
                             top: int = 10) -> BoilerplateResult:
    """Every line whose normalized text (`normalize_for_hash`) occurs in `min_documents` or more documents,
    removed from all of them: site headers and footers, cookie notices, license banners.

    Lines shorter than `min_chars` once normalized are never boilerplate (a lone brace or a one-word heading
    is structure). `doc_id` must identify a document. The output depends only on the documents, not on
    their order or partitioning. A document made only of boilerplate is left with an empty text.
    """
    lines = (docs.select("doc_id", F.posexplode(F.split("text", "\n")).alias("pos", "line"))
             .withColumn("norm", F.trim(F.regexp_replace(F.lower("line"), r"\s+", " "))))
    common = (lines.where(F.length("norm") >= min_chars).groupBy("norm")
              .agg(F.countDistinct("doc_id").alias("documents"))
              .where(F.col("documents") >= min_documents).persist())
    marked = lines.join(common.select("norm", F.lit(True).alias("boilerplate")), "norm", "left")
    kept_lines = F.array_sort(F.collect_list(F.when(F.col("boilerplate").isNull(), F.struct("pos", "line"))))
    rebuilt = (marked.groupBy("doc_id")
               .agg(F.array_join(F.transform(kept_lines, lambda s: s["line"]), "\n").alias("new_text"),
                    F.count("boilerplate").alias("removed"),
                    (F.sum(F.length("line")) + F.count("*") - 1).alias("old_chars"))  # text = lines joined by \n
               .where(F.col("removed") > 0).persist())
    stats = rebuilt.agg(F.count("*").alias("docs"), F.sum("removed").alias("lines"),
                        F.sum(F.col("old_chars") - F.length("new_text")).alias("chars")).first()
    top_lines = [(r["norm"], r["documents"]) for r in
                 common.orderBy(F.desc("documents"), "norm").limit(top).collect()]

    new = F.col("new_text").isNotNull()
    recount = {"text": F.when(new, F.col("new_text")).otherwise(F.col("text")),
               "n_chars": F.when(new, F.length("new_text").cast("long")).otherwise(F.col("n_chars")),
               "n_words": F.when(new & (F.trim("new_text") == ""), F.lit(0).cast("long"))
                           .when(new, F.size(F.split(F.trim("new_text"), r"\s+")).cast("long"))
                           .otherwise(F.col("n_words"))}
    out = docs.join(rebuilt.select("doc_id", "new_text"), "doc_id", "left").select(
        *[recount[c].alias(c) if c in recount else F.col(c) for c in docs.columns])
    return BoilerplateResult(out, lines=common.count(), lines_removed=stats["lines"] or 0,
                             chars_removed=stats["chars"] or 0, docs_changed=stats["docs"],
                             top_lines=top_lines, _cached=(common, rebuilt))
