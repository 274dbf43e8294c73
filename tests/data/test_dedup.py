"""Dedup: exact and near duplicates removed with the kept id, similar-but-distinct documents kept,
and the same documents kept however the input is partitioned."""

import json
import os
import random
import subprocess
import sys

import pytest

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
