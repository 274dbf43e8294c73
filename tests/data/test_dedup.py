"""Dedup: exact and near duplicates removed with the kept id, similar-but-distinct documents kept,
and the same documents kept however the input is partitioned."""

import hashlib
import json
import os
import random
import subprocess
import sys

import pytest
from pyspark.sql import functions as F

from llm_assets.data import dedup
from llm_assets.data.dedup import MinHashParams

VOCAB = ("data model spark table version commit token shard train serve metric drift report "
         "package install option config file read write check quality corpus text clean rule "
         "cluster node edge label graph batch stream query index vector embed search rank score "
         "alpha beta gamma delta river mountain forest ocean desert city village road bridge").split()


def _prose(seed: int, words: int = 150) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(VOCAB) for _ in range(words))


def _edit(text: str, positions: list[int], word: str = "zebra") -> str:
    words = text.split()
    for p in positions:
        words[p] = word
    return " ".join(words)


def _docs(spark):
    a, b, c = _prose(1), _prose(2), _prose(3)
    shared = " ".join(a.split()[:20])
    rows = [
        ("a", a),
        ("a_exact", "  " + a.upper().replace(" ", "  \n ") + " "),  # same text after lowercase + whitespace
        ("b", b),
        ("b_near1", _edit(b, [30, 90])),                              # two words changed
        ("b_near2", _edit(b, [60, 120], "yak")),                      # two other words changed
        ("c", c),
        ("c_similar", shared + " " + _prose(4, 130)),                  # shares a sentence with `a` only
        ("d", _prose(5)),
    ]
    data = [(doc_id, f"file:///{doc_id}.txt", "txt", text, f"{i:02d}{doc_id}"[::-1].ljust(8, "0"),
             len(text), len(text.split())) for i, (doc_id, text) in enumerate(rows)]
    return spark.createDataFrame(
        data, "doc_id string, source string, kind string, text string, content_hash string, "
              "n_chars long, n_words long")


@pytest.fixture(scope="module")
def runs(spark):
    """The same documents deduplicated on 1 and on 4 partitions: (hashes, {partitions: result})."""
    docs = _docs(spark)
    out = {}
    for partitions in (1, 4):
        result = dedup.deduplicate(docs.repartition(partitions), MinHashParams())
        out[partitions] = (result, result.kept.toPandas(), result.rejected.toPandas())
        result.release()
    return dict(docs.select("doc_id", "content_hash").collect()), out


def test_exact_and_near_duplicates_removed_similar_docs_kept(runs):
    hashes, by_partitions = runs
    result, kept, rejected = by_partitions[4]

    b_cluster = ["b", "b_near1", "b_near2"]
    b_keep = min(b_cluster, key=lambda d: hashes[d])
    a_keep = min(["a", "a_exact"], key=lambda d: hashes[d])
    expected_kept = {a_keep, b_keep, "c", "c_similar", "d"}
    assert set(kept["doc_id"]) == expected_kept
    assert list(kept.columns) == ["doc_id", "source", "kind", "text", "content_hash", "n_chars", "n_words",
                                  "text_hash"]  # every input column passes through
    assert sorted(rejected["rule"]) == ["exact_duplicate", "near_duplicate", "near_duplicate"]
    assert result.clusters == 1

    by_id = rejected.set_index("doc_id")
    a_dup = ({"a", "a_exact"} - {a_keep}).pop()
    assert by_id.loc[a_dup, "rule"] == "exact_duplicate" and a_keep in by_id.loc[a_dup, "reason"]
    for d in set(b_cluster) - {b_keep}:
        assert by_id.loc[d, "rule"] == "near_duplicate"
        assert b_keep in by_id.loc[d, "reason"] and "cluster of 3" in by_id.loc[d, "reason"]
    assert set(rejected["step"]) == {"deduped_corpus"}


def test_same_documents_kept_on_1_and_4_partitions(runs):
    _, by_partitions = runs
    (_, kept1, rejected1), (_, kept4, rejected4) = by_partitions[1], by_partitions[4]
    assert sorted(kept1["doc_id"]) == sorted(kept4["doc_id"])
    key = lambda df: sorted(zip(df["doc_id"], df["rule"], df["reason"]))  # noqa: E731
    assert key(rejected1) == key(rejected4)


def test_connected_components_label_each_node_with_its_component_minimum(spark):
    edges = spark.createDataFrame([("d", "c"), ("c", "b"), ("b", "a"), ("f", "e"), ("x", "e")], "src string, dst string")
    labels, rounds = dedup.connected_components(edges)
    assert dict(labels.collect()) == {"a": "a", "b": "a", "c": "a", "d": "a", "e": "e", "f": "e", "x": "e"}
    assert rounds >= 3  # a path of length 3 needs three rounds to carry the minimum across


def test_estimated_jaccard_tracks_the_true_jaccard():
    params = MinHashParams(ngram=3, bands=32, rows=8)
    a, b = _prose(7, 300), _edit(_prose(7, 300), list(range(0, 300, 15)))
    sa, sb = dedup.minhash_signature(a, params), dedup.minhash_signature(b, params)
    ha, hb = set(dedup.shingle_hashes(a, 3).tolist()), set(dedup.shingle_hashes(b, 3).tolist())
    true = len(ha & hb) / len(ha | hb)
    assert abs(dedup.estimated_jaccard(sa, sb) - true) < 0.1
    assert dedup.estimated_jaccard(sa, dedup.minhash_signature(_prose(8, 300), params)) < 0.1


def test_signatures_are_the_same_in_another_process():
    text = _prose(9)
    here = dedup.minhash_signature(text).tolist()
    code = ("import json, sys; from llm_assets.data import dedup; "
            "print(json.dumps(dedup.minhash_signature(sys.argv[1]).tolist()))")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code, text], capture_output=True, text=True, env=env, check=True)
    assert json.loads(out.stdout) == here
    assert dedup.normalize_for_hash("  Hello \n  World ") == "hello world"


def test_spark_text_hash_is_sha256_of_normalize_for_hash(spark):
    texts = ["Hello World", "\tHello  \r\nWORLD\n", " hello world ", "a\r\nb\r\n", ""]
    got = [r[0] for r in spark.createDataFrame([(t,) for t in texts], "text string")
           .select(dedup.text_hash(F.col("text"))).collect()]
    assert got == [hashlib.sha256(dedup.normalize_for_hash(t).encode()).hexdigest() for t in texts]
    assert len(set(got[:3])) == 1


def test_cluster_sizes_count_each_kept_doc_with_its_exact_and_near_copies(runs):
    _, by_partitions = runs
    for result, kept, _ in by_partitions.values():
        # {a, a_exact} -> 2, {b, b_near1, b_near2} -> 3, c, c_similar, d alone
        assert result.cluster_sizes == {1: 3, 2: 1, 3: 1}
        assert sum(s * n for s, n in result.cluster_sizes.items()) == 8
        assert sum(result.cluster_sizes.values()) == len(kept)


def test_cluster_sizes_markdown_bins_large_clusters():
    table = dedup.cluster_sizes_markdown({1: 3, 2: 1, 3: 1, 5: 2, 8: 1, 9: 1})
    assert table.splitlines() == [
        "| cluster size | clusters | documents | share of documents |", "|---|---:|---:|---:|",
        "| 1 | 3 | 3 | 8.6% |", "| 2 | 1 | 2 | 5.7% |", "| 3 | 1 | 3 | 8.6% |",
        "| 5-8 | 3 | 18 | 51.4% |", "| 9-16 | 1 | 9 | 25.7% |"]


HEADER = "Home > Articles > Latest | posted by the editorial team"
FOOTER = "Copyright 2024 Northwind Media. All rights reserved."


def _boilerplate_docs(spark):
    rows = [
        ("p1", f"{HEADER}\nThe river bridge opened in spring.\n{FOOTER}"),
        ("p2", "  home >  ARTICLES > latest | posted by the editorial team \n"
               f"A comet crossed the sky.\nMenu\n{FOOTER}\n"),
        ("p3", f"Menu\n{HEADER}\nThe bakery sells rye bread.\nMenu"),
        ("p4", f"{FOOTER}\nOnly a footer here: the {HEADER} line is quoted, not alone."),
        ("p5", f"{HEADER}\n{FOOTER}"),
        ("p6", None),
    ]
    data = [(d, f"file:///{d}.txt", t, len(t) if t else 0, len(t.split()) if t else 0) for d, t in rows]
    return spark.createDataFrame(data, "doc_id string, source string, text string, n_chars long, n_words long")


def test_boilerplate_lines_removed_from_every_document_that_repeats_them(spark):
    docs = _boilerplate_docs(spark)
    result = dedup.remove_boilerplate_lines(docs, min_documents=3, min_chars=10)
    out = {r["doc_id"]: r.asDict() for r in result.docs.collect()}
    result.release()

    assert out["p1"]["text"] == "The river bridge opened in spring."
    assert out["p2"]["text"] == "A comet crossed the sky.\nMenu\n"       # case and spacing normalized, last \n kept
    assert out["p3"]["text"] == "Menu\nThe bakery sells rye bread.\nMenu"  # "Menu" is shorter than min_chars
    assert out["p4"]["text"].startswith("Only a footer here")              # the header inside a line stays
    assert out["p5"]["text"] == "" and out["p5"]["n_words"] == 0           # nothing but boilerplate
    assert out["p6"]["text"] is None
    assert out["p1"]["n_chars"] == len(out["p1"]["text"]) and out["p1"]["n_words"] == 6
    assert list(result.docs.columns) == list(docs.columns)

    assert result.lines == 2 and result.docs_changed == 5
    assert result.top_lines == [(FOOTER.lower(), 4), (" ".join(HEADER.lower().split()), 4)]
    assert result.lines_removed == 4 + 4                                  # header in p1 p2 p3 p5, footer in p1 p2 p4 p5
    before = {r["doc_id"]: r["text"] or "" for r in docs.collect()}
    assert result.chars_removed == sum(len(before[d]) - len(out[d]["text"] or "") for d in before)


def test_boilerplate_removal_is_the_same_on_any_partitioning(spark):
    docs = _boilerplate_docs(spark)
    texts = []
    for partitions in (1, 3):
        result = dedup.remove_boilerplate_lines(docs.repartition(partitions), min_documents=3)
        texts.append(sorted((r["doc_id"], r["text"] or "") for r in result.docs.collect()))
        counts = (result.lines, result.lines_removed, result.chars_removed, result.docs_changed)
        texts.append(counts)
        result.release()
    assert texts[0] == texts[2] and texts[1] == texts[3]
