import json

import numpy as np
import pytest

from llm_assets.tokens import shards
from llm_assets.tokens import tokenizer as bpe
from tests.tokens.sample import SENTENCES, corpus_rows


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    tok = bpe.train_bpe(iter(SENTENCES), vocab_size=600)
    path, _ = bpe.save_hf_tokenizer(tok, tmp_path_factory.mktemp("tok"))
    return path


def build(spark, tok_dir, out_dir, partitions, rows=None, **kw):
    df = spark.createDataFrame(rows or corpus_rows(120), "doc_id string, text string").repartition(partitions)
    kw = {"seq_len": 32, "sequences_per_shard": 16, "validation_fraction": 0.2, **kw}
    return shards.build_shards(df, tok_dir, out_dir, data_commit="c0ffee", **kw)


def files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_shards_byte_identical_across_partitioning_and_runs(spark, tok_dir, tmp_path):
    one = build(spark, tok_dir, tmp_path / "one", partitions=1)
    four = build(spark, tok_dir, tmp_path / "four", partitions=4)
    again = build(spark, tok_dir, tmp_path / "again", partitions=4)
    assert files(one.path) == files(four.path) == files(again.path)
    assert one.manifest_sha256 == four.manifest_sha256 == again.manifest_sha256
    assert not list(tmp_path.glob(".tokenized-*"))  # the executors' spill files are gone

    m = json.loads((one.path / "manifest.json").read_text())
    assert m["seq_len"] == 32 and m["dtype"] == "uint16" and m["data_commit"] == "c0ffee"
    assert m["tokenizer_sha256"] == tok_dir.name
    assert m["vocab_size"] == bpe.load_tokenizer(tok_dir).get_vocab_size()
    train = m["splits"]["train"]
    assert len(train) > 1 and all(e["sequences"] == 16 for e in train[:-1])  # fixed-size shards
    assert m["documents"]["validation"] > 0

    arr = shards.read_split(str(one.path), "train")
    assert arr.shape == (sum(e["sequences"] for e in train), 32) and arr.dtype == np.uint16
    # documents are joined with EOS, in doc_id order: decode the stream back to the texts
    tok = bpe.load_tokenizer(tok_dir)
    eos = tok.token_to_id(bpe.EOS_TOKEN)
    docs = tok.decode(arr.reshape(-1).tolist(), skip_special_tokens=False).split(bpe.EOS_TOKEN)
    expected = [t for d, t in sorted(corpus_rows(120)) if shards.assign_split(d, 0.2) == "train"]
    assert docs[:-1] == expected[: len(docs) - 1]
    assert int((arr == eos).sum()) == len(docs) - 1


@pytest.mark.parametrize("dtype", ["<u2", "<u4"])
def test_tokenize_documents_gives_each_documents_ids_then_eos(spark, tok_dir, dtype):
    rows = corpus_rows(30) + [("empty", ""), ("null", None)]
    df = spark.createDataFrame(rows, "doc_id string, text string").repartition(2)
    tok = bpe.load_tokenizer(tok_dir)
    eos = tok.token_to_id(bpe.EOS_TOKEN)
    out = shards.tokenize_documents(df, (tok_dir / "tokenizer.json").read_text(), eos, 0.2, dtype=dtype).collect()
    texts = dict(rows)
    assert sorted(r.doc_id for r in out) == sorted(texts)
    for r in out:
        expected = tok.encode(texts[r.doc_id] or "", add_special_tokens=False).ids + [eos]
        assert np.frombuffer(r.ids, dtype=dtype).tolist() == expected
        assert r.split == shards.assign_split(r.doc_id, 0.2)


def test_spilled_documents_come_back_in_the_order_spark_sorts_them(spark, tok_dir, tmp_path):
    # duplicated, non-ASCII, empty and null doc ids: the driver's sort of the spilled keys must be orderBy's
    rows = corpus_rows(40) + [("dup", "first text"), ("dup", "second text"), ("é-doc", "accent"),
                              ("Z-doc", "upper case"), ("", "empty id"), (None, "no id")]
    df = spark.createDataFrame(rows, "doc_id string, text string").repartition(3)
    tokenizer_json = (tok_dir / "tokenizer.json").read_text()
    eos = bpe.load_tokenizer(tok_dir).token_to_id(bpe.EOS_TOKEN)
    files = shards.spill_tokenized(df, tmp_path, tokenizer_json, eos, 0.2, dtype="<u2")
    assert len(files) == 3 and sorted(files) == sorted(str(p) for p in tmp_path.iterdir())
    spilled = [(split, ids.tolist()) for split, ids in shards.read_spilled_in_order(files, np.dtype("<u2"))]
    tokenized = shards.tokenize_documents(df, tokenizer_json, eos, 0.2, dtype="<u2")
    ordered = tokenized.orderBy("split", "doc_id", "text_sha").collect()
    assert spilled == [(r.split, np.frombuffer(r.ids, "<u2").tolist()) for r in ordered]
    assert len(spilled) == len(rows)


def test_even_file_splits_give_each_core_an_equal_share_of_one_file(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    rng = np.random.default_rng(0)
    texts = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz "), 400)) for _ in range(4000)]
    pq.write_table(pa.table({"doc_id": [str(i) for i in range(4000)], "text": texts}), tmp_path / "docs.parquet",
                   row_group_size=100, compression="none")
    key = "spark.sql.files.openCostInBytes"
    before = spark.conf.get(key, None)
    with shards.even_file_splits(spark):
        docs = spark.read.schema("doc_id string, text string").parquet(str(tmp_path / "docs.parquet"))
        counts = [r["count"] for r in docs.groupBy(F.spark_partition_id()).count().collect()]
    assert len(counts) == spark.sparkContext.defaultParallelism == 2  # Spark's default: one split of this file
    assert max(counts) - min(counts) <= 200, counts  # at most two row groups apart
    assert spark.conf.get(key, None) == before


def test_split_is_a_stable_hash_of_doc_id():
    ids = [f"doc-{i}" for i in range(2000)]
    val = {d for d in ids if shards.assign_split(d, 0.1) == "validation"}
    assert 120 < len(val) < 280
    more = ids + [f"new-{i}" for i in range(500)]  # a growing corpus keeps old documents in place
    assert {d for d in more if shards.assign_split(d, 0.1) == "validation"} & set(ids) == val
    assert {d for d in ids if shards.assign_split(d, 0.1, seed=1) == "validation"} != val


def test_read_split_rejects_a_corrupted_shard(spark, tok_dir, tmp_path):
    result = build(spark, tok_dir, tmp_path / "s", partitions=2)
    victim = result.path / result.manifest["splits"]["train"][1]["file"]
    data = bytearray(victim.read_bytes())
    data[10] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=victim.name):
        shards.read_split(str(result.path), "train")
    assert shards.read_split(str(result.path), "validation").shape[1] == 32  # the other split is intact


def test_uint32_for_large_vocab_and_bad_ids(tmp_path):
    big = shards.pack_shards([("train", np.arange(70_000, 70_064))], tmp_path / "big", seq_len=16,
                             sequences_per_shard=2, vocab_size=80_000, header={})
    assert big.manifest["dtype"] == "uint32"
    assert shards.read_split(str(big.path), "train").reshape(-1).tolist() == list(range(70_000, 70_064))
    with pytest.raises(ValueError, match="vocab_size"):
        shards.pack_shards([("train", np.array([5, 700]))], tmp_path / "bad", seq_len=2,
                           sequences_per_shard=2, vocab_size=400, header={})
