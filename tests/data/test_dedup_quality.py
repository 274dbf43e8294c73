"""Dedup quality on a planted corpus: near-duplicate recall and precision of `deduplicate` at its defaults.

The corpus is built here from a seeded `random`: ~150 distinct prose documents (sentence templates
filled from a topic vocabulary, so two distinct documents share almost no word 5-grams), near-duplicates
of some of them (3-5% of words substituted, paragraphs reordered, a ~20-word site header and footer
added), and distinct-but-similar documents (the same report template with other content, or one shared
quoted paragraph). Ground truth is the construction: each original with its planted copies is a group.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest

from llm_assets.data import dedup
from llm_assets.data.dedup import MinHashParams

TOPICS = {
    "cooking": "onion garlic butter skillet oven recipe broth dough flour pepper sauce kitchen lemon "
               "vinegar pastry thyme crust stew noodle cabbage".split(),
    "hiking": "trail summit ridge boots backpack compass valley glacier campsite tent meadow canyon "
              "creek switchback map blister lantern pine boulder ranger".split(),
    "software": "compiler function module server database cache thread library kernel parser "
                "scheduler socket deployment container interface registry patch query index buffer".split(),
    "finance": "budget loan mortgage dividend portfolio invoice ledger audit pension bond tax "
               "account broker margin premium deposit salary refund merger asset".split(),
    "gardening": "tomato seedling compost trellis hedge tulip mulch greenhouse fertilizer orchard "
                 "soil rake sprout beetle vine lettuce shed shovel blossom hose".split(),
    "astronomy": "telescope nebula comet orbit galaxy eclipse meteor asteroid planet crater "
                 "satellite spectrum pulsar quasar lens observatory horizon moon star dust".split(),
}
ADJECTIVES = ("quiet bright narrow heavy careful ancient modern simple rough gentle sudden steady "
              "hidden curious brittle generous hollow polished remote crowded fragile vivid patient "
              "stubborn tidy humble reckless silent clever dusty frozen golden nervous ordinary "
              "peculiar rapid rusty sharp soft tender uneven warm wild").split()
VERBS = ("moves holds carries follows breaks builds checks cleans covers drops finds guards "
         "handles joins keeps lifts marks opens passes pulls pushes reaches shapes splits "
         "supports tests turns warns wraps watches replaces repairs measures limits feeds").split()
ADVERBS = ("slowly quickly rarely often barely gladly loudly neatly openly partly calmly "
           "boldly firmly gently seldom").split()
NAMES = ("Ada Bruno Chen Dalia Emeka Farah Goran Hana Ivo Jun Kofi Lena Mateo Nadia Omar Priya "
         "Quinn Rosa Sami Tomas Uma Viktor Wen Yusuf Zora").split()
PLACES = ("Lisbon Oslo Nairobi Quito Kyoto Tallinn Porto Hanoi Lima Dakar Bergen Cusco Accra "
          "Riga Split Oaxaca").split()
TIMES = "spring winter autumn summer week month year night morning evening".split()
TEMPLATES = [
    "The {a} {n} {v} the {n} near the {a} {n}.",
    "{P} {v} a {a} {n} in {L} last {t}.",
    "Every {t} the {n} {v} {d} while the {n} stays {a}.",
    "A {a} {n} {v} the {n}, and {P} {v} the {a} {n} {d}.",
    "When the {n} is {a}, {P} {v} the {n} before the {n} {v} it.",
    "In {L}, the {a} {n} {v} the {n} {d}.",
    "Nobody expected that the {n} {v} the {a} {n} so {d}.",
    "{P} says the {n} {v} every {a} {n} in the {n}.",
    "After the {t}, the {a} {n} {v} {d} toward the {n}.",
    "The {n} of {P} {v} a {a} {n} and a {a} {n}.",
]

# Site chrome a crawler picks up: ~10 words of header and ~10 of footer per site.
BOILERPLATE = [
    ("Home > Articles > Latest | posted by the editorial team",
     "Share this article. Copyright 2024 Northwind Media. All rights reserved."),
    ("Skip to main content. Menu Search Subscribe Sign in",
     "Related stories | Privacy policy | Terms of use | Contact us"),
    ("Breaking: read our newsletter, delivered free every Monday morning",
     "Comments are closed. Follow us for more stories like this one."),
]

REPORT_HEADINGS = ["Weekly status report for the {n} team.", "Summary of the week:", "Risks and open questions:",
                   "Plans for next week:", "Prepared by {P} in {L}."]


def _sentence(rng: random.Random, nouns: list[str]) -> str:
    slots = {"a": lambda: rng.choice(ADJECTIVES), "n": lambda: rng.choice(nouns), "v": lambda: rng.choice(VERBS),
             "d": lambda: rng.choice(ADVERBS), "P": lambda: rng.choice(NAMES), "L": lambda: rng.choice(PLACES),
             "t": lambda: rng.choice(TIMES)}
    out, template = [], rng.choice(TEMPLATES)
    for part in template.split(" "):
        # each "{x}" in the template draws a fresh word: str.format would reuse one per name
        while "{" in part:
            i = part.index("{")
            part = part[:i] + slots[part[i + 1]]() + part[i + 3:]
        out.append(part)
    return " ".join(out)


def _paragraph(rng: random.Random, nouns: list[str], words: int) -> str:
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        sentences.append(_sentence(rng, nouns))
    return " ".join(sentences)


def _document(rng: random.Random, topic: str) -> str:
    """150-400 words of prose on `topic`, in 3-6 paragraphs (a paragraph's last sentence may overrun its share)."""
    words, paragraphs = rng.randint(160, 330), rng.randint(3, 6)
    nouns = TOPICS[topic]
    return "\n\n".join(_paragraph(rng, nouns, words // paragraphs) for _ in range(paragraphs))


def _report(rng: random.Random, topic: str) -> str:
    """The status-report template: fixed headings, each followed by new prose."""
    nouns = TOPICS[topic]
    sections = [h.format(n=rng.choice(nouns), P=rng.choice(NAMES), L=rng.choice(PLACES)) for h in REPORT_HEADINGS]
    return "\n\n".join(f"{h}\n{_paragraph(rng, nouns, 40)}" for h in sections)


def substituted(rng: random.Random, text: str) -> str:
    """3-5% of the words replaced by other vocabulary words (paragraph breaks kept)."""
    paragraphs = [p.split(" ") for p in text.split("\n\n")]
    spots = [(i, j) for i, p in enumerate(paragraphs) for j in range(len(p))]
    bank = ADJECTIVES + VERBS + [n for ns in TOPICS.values() for n in ns]
    for i, j in rng.sample(spots, max(1, round(len(spots) * rng.uniform(0.03, 0.05)))):
        paragraphs[i][j] = rng.choice([w for w in bank if w != paragraphs[i][j]])
    return "\n\n".join(" ".join(p) for p in paragraphs)


def reordered(rng: random.Random, text: str) -> str:
    paragraphs = text.split("\n\n")
    order = list(range(len(paragraphs)))
    while order == sorted(order):
        rng.shuffle(order)
    return "\n\n".join(paragraphs[i] for i in order)


def with_boilerplate(rng: random.Random, text: str) -> str:
    header, footer = rng.choice(BOILERPLATE)
    return f"{header}\n\n{text}\n\n{footer}"


@dataclass
class PlantedCorpus:
    texts: dict[str, str] = field(default_factory=dict)
    group: dict[str, str] = field(default_factory=dict)
    """doc_id -> its original's doc_id: the ground-truth duplicate group."""
    similar: list[tuple[str, str]] = field(default_factory=list)
    """Distinct-but-similar pairs (each in its own group)."""

    def add(self, doc_id: str, text: str, original: str | None = None) -> None:
        self.texts[doc_id] = text
        self.group[doc_id] = original or doc_id

    @property
    def planted_pairs(self) -> list[tuple[str, str]]:
        return [(orig, d) for d, orig in self.group.items() if d != orig]


def planted_corpus(seed: int = 20240611, originals: int = 150) -> PlantedCorpus:
    rng = random.Random(seed)
    corpus, topics = PlantedCorpus(), sorted(TOPICS)
    for i in range(originals):
        corpus.add(f"doc{i:03d}", _document(rng, topics[i % len(topics)]))
    edits = {"sub": substituted, "reorder": reordered, "boiler": with_boilerplate}
    # doc000-doc059 get one copy each (20 per edit); doc000-doc014 also get a substituted and a boilerplate
    # copy where they lack one: 80 copies in 60 groups of 2 to 4 documents
    for i in range(60):
        original = f"doc{i:03d}"
        kinds = [list(edits)[i % 3]] + (["sub", "boiler"] if i < 15 else [])
        for k, kind in enumerate(dict.fromkeys(kinds)):
            corpus.add(f"{original}_{kind}{k}", edits[kind](rng, corpus.texts[original]), original)
    for i in range(15):  # the report template filled twice on one topic: the headings are shared
        topic = topics[i % len(topics)]
        a, b = f"report{i:02d}a", f"report{i:02d}b"
        corpus.add(a, _report(rng, topic))
        corpus.add(b, _report(rng, topic))
        corpus.similar.append((a, b))
    for i in range(100, 115):  # a new document on the same topic that quotes one paragraph of doc{i}
        quoted = rng.choice(corpus.texts[f"doc{i:03d}"].split("\n\n"))
        fresh = _document(rng, topics[i % len(topics)]).split("\n\n")
        fresh.insert(rng.randrange(len(fresh) + 1), quoted)
        corpus.add(f"quote{i:03d}", "\n\n".join(fresh))
        corpus.similar.append((f"doc{i:03d}", f"quote{i:03d}"))
    return corpus


def true_jaccard(a: str, b: str, ngram: int) -> float:
    sa, sb = set(dedup.shingle_hashes(a, ngram).tolist()), set(dedup.shingle_hashes(b, ngram).tolist())
    return len(sa & sb) / len(sa | sb)


def _frame(spark, corpus: PlantedCorpus):
    rows = [(doc_id, f"file:///{doc_id}.txt", "txt", text, hashlib.sha256(text.encode()).hexdigest(),
             len(text), len(text.split())) for doc_id, text in sorted(corpus.texts.items())]
    return spark.createDataFrame(rows, "doc_id string, source string, kind string, text string, "
                                       "content_hash string, n_chars long, n_words long")


@dataclass(frozen=True)
class Quality:
    recall: float
    precision: float
    missed: list[tuple[str, str]]
    wrongly_removed: list[str]


def score(corpus: PlantedCorpus, kept: set[str], removed: dict[str, str]) -> Quality:
    """Pair recall and removal precision against the planted groups.

    `removed` maps each removed doc to the kept doc it was removed for. A planted pair is found when
    both documents end on the same kept document; a removal is correct when that kept document is in
    the removed one's group (any other removal, a distinct document among them, is a false positive).
    """
    assert kept.isdisjoint(removed) and kept | set(removed) == set(corpus.texts)
    kept_for = {d: removed.get(d, d) for d in corpus.texts}
    pairs = corpus.planted_pairs
    missed = [(a, b) for a, b in pairs if kept_for[a] != kept_for[b]]
    wrong = sorted(d for d, k in removed.items() if corpus.group[d] != corpus.group[k])
    return Quality(recall=1 - len(missed) / len(pairs),
                   precision=(len(removed) - len(wrong)) / len(removed) if removed else 1.0,
                   missed=missed, wrongly_removed=wrong)


@pytest.fixture(scope="module")
def corpus() -> PlantedCorpus:
    return planted_corpus()


@pytest.fixture(scope="module")
def runs(spark, corpus):
    """The planted corpus deduplicated at the default MinHashParams on 1, 2 and 8 partitions."""
    docs = _frame(spark, corpus)
    out = {}
    for partitions in (1, 2, 8):
        result = dedup.deduplicate(docs.repartition(partitions), MinHashParams())
        kept = {r["doc_id"] for r in result.kept.select("doc_id").collect()}
        rejected = result.rejected.select("doc_id", "rule", "reason").collect()
        out[partitions] = (result, kept, rejected)
        result.release()
    return out


def _kept_id(reason: str) -> str:
    # "same normalized text as kept doc <id>" / "near-duplicate of kept doc <id> (MinHash ...)"
    return reason.split("kept doc ", 1)[1].split(" ", 1)[0]


def test_planted_corpus_is_what_the_test_claims(corpus):
    params = MinHashParams()
    # distinct documents barely share word n-grams, planted copies do, similar ones well below threshold
    originals = [d for d in corpus.texts if d.startswith("doc") and "_" not in d]
    distinct = max(true_jaccard(corpus.texts[a], corpus.texts[b], params.ngram)
                   for a, b in zip(originals[:40], originals[1:41]))
    similar = max(true_jaccard(corpus.texts[a], corpus.texts[b], params.ngram) for a, b in corpus.similar)
    assert distinct < 0.05
    assert similar < params.threshold - 0.2
    assert len(corpus.planted_pairs) == 80 and all(150 <= len(corpus.texts[d].split()) <= 420 for d in originals)


def test_near_duplicate_recall_and_precision_at_the_defaults(corpus, runs):
    params = MinHashParams()
    result, kept, rejected = runs[8]
    assert {r["rule"] for r in rejected} <= {"exact_duplicate", "near_duplicate"}
    quality = score(corpus, kept, {r["doc_id"]: _kept_id(r["reason"]) for r in rejected})

    by_kind: dict[str, list[float]] = {}
    for a, b in corpus.planted_pairs:
        by_kind.setdefault(b.split("_")[1].rstrip("0123456789"), []).append(
            true_jaccard(corpus.texts[a], corpus.texts[b], params.ngram))
    print(f"\ndedup quality at {params} ({params.num_perm} permutations): "
          f"{len(corpus.texts)} docs, {len(corpus.planted_pairs)} planted pairs, "
          f"{len(corpus.similar)} similar-but-distinct pairs")
    for kind, js in sorted(by_kind.items()):
        print(f"  {kind:8s} true {params.ngram}-gram Jaccard min {min(js):.3f} mean {sum(js) / len(js):.3f}")
    print(f"  recall {quality.recall:.4f}  precision {quality.precision:.4f}  "
          f"missed {quality.missed}  wrongly removed {quality.wrongly_removed}")
    assert quality.recall >= 0.95, quality.missed
    assert quality.precision >= 0.99, quality.wrongly_removed


def test_cluster_sizes_match_the_planted_groups(corpus, runs):
    planted = Counter(Counter(corpus.group.values()).values())  # group size -> groups
    print(f"\n{dedup.cluster_sizes_markdown(runs[8][0].cluster_sizes)}")
    assert planted == {1: 135, 2: 45, 3: 10, 4: 5}
    for result, _, _ in runs.values():
        assert result.cluster_sizes == planted


def test_same_documents_kept_on_1_2_and_8_partitions(runs):
    kept = {n: sorted(k) for n, (_, k, _) in runs.items()}
    assert kept[1] == kept[2] == kept[8]
    reasons = {n: sorted((r["doc_id"], r["reason"]) for r in rej) for n, (_, _, rej) in runs.items()}
    assert reasons[1] == reasons[2] == reasons[8]


def test_boilerplate_lines_removed_leave_the_boilerplate_copies_exact_duplicates(spark, corpus):
    result = dedup.remove_boilerplate_lines(_frame(spark, corpus), min_documents=5)
    after = {r["doc_id"]: r["text"] for r in result.docs.select("doc_id", "text").collect()}
    result.release()

    chrome = {dedup.normalize_for_hash(line) for pair in BOILERPLATE for line in pair}
    headings = {dedup.normalize_for_hash(h) for h in REPORT_HEADINGS if "{" not in h}
    assert result.lines == 9  # the site chrome, and the report template's fixed headings
    assert {line for line, _ in result.top_lines} == chrome | headings
    boiler_copies = [d for d in corpus.texts if "_boiler" in d]
    assert result.lines_removed == 2 * len(boiler_copies) + len(headings) * 2 * 15
    for d in boiler_copies:
        assert dedup.normalize_for_hash(after[d]) == dedup.normalize_for_hash(corpus.texts[corpus.group[d]])
    assert all(after[d] == corpus.texts[d] for d in corpus.texts if "_" not in d and not d.startswith("report"))
