"""An object-storage home: Delta tables, token shards and checkpoints under `s3://bucket/prefix`.

moto's S3 server on 127.0.0.1 stands in for S3 (hence `on_moto_s3` in the names); everything else is
real: the resources come from `build_resources` with LLMOPS_STORAGE_URI and the AWS_* settings, Spark
writes, delta-rs commits to the bucket, and a second reader (delta-rs with its own options, boto3) checks
what landed there.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from deltalake import DeltaTable

from llm_assets.artifacts import ShardSet, TokenizerArtifact
from llm_assets.data import accounting
from llm_assets.data.assets import cleaned_corpus, curated_corpus, deduped_corpus, raw_documents
from llm_assets.tokens import shards
from llm_assets.tokens.assets import local_shards, token_shards, tokenizer
from llm_assets.training import checkpoints
from llm_assets.training.assets import base_model, model_catalog, trained_checkpoint
from resources import build_resources
from resources.lakehouse import LakehouseResource
from resources.spark import SparkResource
from tests.corpus import write_corpus
from tests.scale.conftest import s3_client

BUCKET = "llmops-home"


def _s3_resources(**env: str) -> dict:
    """`build_resources` with the storage home at s3://llmops-home/team-a (and `env` on top of os.environ)."""
    base = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return build_resources({**base, "LLMOPS_STORAGE_URI": f"s3://{BUCKET}/team-a", **env})


@pytest.fixture
def s3_home(moto_s3, home):
    """Resources whose storage home is s3://llmops-home/team-a on moto; yields (resources, boto3 client)."""
    s3 = s3_client(moto_s3)
    s3.create_bucket(Bucket=BUCKET)
    return _s3_resources(), s3


def _keys(s3, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def _other_reader_options(endpoint: str) -> dict[str, str]:
    """delta-rs options a user would write by hand: not the ones our resource builds."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ALLOW_HTTP": "true"}


def test_settings_name_the_object_storage_home(s3_home, moto_s3):
    resources, _ = s3_home
    lakehouse, settings = resources["lakehouse"], resources["settings"]
    assert lakehouse.root == f"s3://{BUCKET}/team-a/lakehouse"
    assert settings.remote("shards", "x") == f"s3://{BUCKET}/team-a/shards/x"
    assert isinstance(lakehouse.s3_secret_access_key, dg.EnvVar)  # the key is not in the resource's config
    assert lakehouse.storage_options()["AWS_ENDPOINT_URL"] == moto_s3
    with pytest.raises(ValueError, match="LLMOPS_STORAGE_URI"):
        build_resources({"LLMOPS_STORAGE_URI": "/data/llmops"})


def test_lakehouse_commits_delta_versions_to_moto_s3_read_back_by_deltalake_and_spark(s3_home, moto_s3, spark, home):
    resources, s3 = s3_home
    lakehouse: LakehouseResource = resources["lakehouse"]
    first = spark.createDataFrame([("a", 1), ("b", 2)], "doc_id string, n long")
    v0 = lakehouse.write(first, "docs", "first batch")
    v1 = lakehouse.write(spark.createDataFrame([("c", 3)], "doc_id string, n long"), "docs", "more", mode="append")
    assert (v0.version, v0.rows, v1.version, v1.rows) == (0, 2, 1, 3)
    assert v1.uri == f"s3://{BUCKET}/team-a/lakehouse/docs"

    keys = _keys(s3, "team-a/lakehouse/docs/")
    assert "team-a/lakehouse/docs/_delta_log/00000000000000000001.json" in keys
    assert sum(k.endswith(".parquet") for k in keys) >= 2
    assert not (home / "lakehouse" / "docs").exists()  # nothing of the table is local

    # Another reader, with its own options: both versions and the commit messages.
    other = DeltaTable(v1.uri, storage_options=_other_reader_options(moto_s3))
    assert sorted(other.to_pyarrow_table().column("doc_id").to_pylist()) == ["a", "b", "c"]
    assert [h["message"] for h in other.history()][:2] == ["more", "first batch"]
    old = DeltaTable(v1.uri, version=0, storage_options=_other_reader_options(moto_s3))
    assert sorted(old.to_pyarrow_table().column("doc_id").to_pylist()) == ["a", "b"]

    # Spark reads a pinned version back through the resource.
    assert sorted(r.doc_id for r in lakehouse.read(spark, v0).collect()) == ["a", "b"]
    assert sorted(r.n for r in lakehouse.read(spark, "docs").collect()) == [1, 2, 3]


def test_an_asset_writes_to_moto_s3_with_keys_resolved_from_env_vars_in_a_run(s3_home, moto_s3):
    resources, s3 = s3_home

    @dg.asset
    def tiny(spark: SparkResource, lakehouse: LakehouseResource) -> dg.MaterializeResult:
        df = spark.session().createDataFrame([("x", 1)], "doc_id string, n long")
        return dg.MaterializeResult(metadata={"version": lakehouse.write(df, "tiny", "from a run").version})

    result = dg.materialize([tiny], resources={k: resources[k] for k in ("spark", "lakehouse")})
    assert result.success
    table = DeltaTable(f"s3://{BUCKET}/team-a/lakehouse/tiny", storage_options=_other_reader_options(moto_s3))
    assert table.to_pyarrow_table().column("doc_id").to_pylist() == ["x"]


def test_review_queue_and_verdicts_on_moto_s3(s3_home, moto_s3):
    from llm_assets.evaluation import review

    resources, _ = s3_home
    lake: LakehouseResource = resources["lakehouse"]
    options = lake.storage_options()
    samples = [{"kind": "qa", "prompt": "When?", "output": "at six", "reference": "six"}]
    assert review.summary(lake.root, "m", "1", options)["queued"] == 0  # no table yet
    assert review.enqueue(lake.root, "m", "1", samples, options) == 1
    assert review.enqueue(lake.root, "m", "1", samples, options) == 0
    (item,) = review.items(lake.root, "m", "1", options)
    review.record(lake.root, item["review_id"], "good", reviewer="ana", storage_options=options)
    assert review.summary(lake.root, "m", "1", options)["good_rate"] == 1.0
    verdicts = DeltaTable(lake.uri(review.VERDICTS), storage_options=_other_reader_options(moto_s3))
    assert verdicts.to_pyarrow_table().column("reviewer").to_pylist() == ["ana"]


def _packed(tmp_path):
    rng = np.random.default_rng(0)
    docs = [("train" if i % 4 else "validation", rng.integers(0, 500, size=40)) for i in range(24)]
    return shards.pack_shards(docs, tmp_path / "packed", seq_len=16, sequences_per_shard=4, vocab_size=500,
                              header={"data_commit": "c0ffee"})


def test_token_shards_on_moto_s3_upload_manifest_last_and_fetch_verified(s3_home, tmp_path):
    resources, s3 = s3_home
    settings = resources["settings"]
    fs, dest = settings.object_store().filesystem(), settings.remote("shards", "c0ffee")
    packed = _packed(tmp_path)

    order = shards.publish_shards(packed.path, fs, dest.removeprefix("s3://"))
    assert order[-1] == shards.MANIFEST and len(order) == len(list(packed.path.iterdir()))
    remote_manifest = s3.get_object(Bucket=BUCKET, Key="team-a/shards/c0ffee/manifest.json")["Body"].read()
    assert json.loads(remote_manifest) == packed.manifest

    fetched = shards.fetch_shards(fs, dest.removeprefix("s3://"), tmp_path / "fetched")
    for split in shards.SPLITS:
        assert np.array_equal(shards.read_split(str(fetched), split), shards.read_split(str(packed.path), split))

    # A shard changed in the bucket is caught by name.
    s3.put_object(Bucket=BUCKET, Key="team-a/shards/c0ffee/train-00000.bin", Body=b"\0" * 128)
    with pytest.raises(ValueError, match="train-00000.bin is corrupt"):
        shards.fetch_shards(fs, dest.removeprefix("s3://"), tmp_path / "again")


def test_shards_missing_here_are_fetched_from_moto_s3_only_if_the_manifest_is_the_materialized_one(s3_home,
                                                                                                   tmp_path, home):
    resources, s3 = s3_home
    settings = resources["settings"]
    packed = _packed(tmp_path)
    remote = settings.remote("shards", "c0ffee")
    shards.publish_shards(packed.path, settings.object_store().filesystem(), remote.removeprefix("s3://"))
    gone = str(tmp_path / "elsewhere" / "c0ffee")  # the path recorded on another machine
    replaced = ShardSet(path=gone, manifest_sha256="0" * 64, data_commit="c0ffee", seq_len=16, remote=remote)
    with pytest.raises(ValueError, match="manifest sha256 .* differs from the materialized one"):
        local_shards(replaced, settings)
    assert not (home / "shards" / "c0ffee").exists() and not list((home / "shards").glob(".fetch-*"))

    shard_set = ShardSet(path=gone, manifest_sha256=packed.manifest_sha256, data_commit="c0ffee", seq_len=16,
                         remote=remote)
    fetched = local_shards(shard_set, settings)
    assert fetched == str(home / "shards" / "c0ffee")
    assert np.array_equal(shards.read_split(fetched, "train"), shards.read_split(str(packed.path), "train"))
    assert local_shards(ShardSet(str(packed.path), packed.manifest_sha256, "c0ffee", 16, remote), settings) == str(
        packed.path)  # a local copy is used as is


def _sealed_tag(ckpt_dir, step: int):
    tag = ckpt_dir / checkpoints.tag_name(step)
    (tag / "global_step").mkdir(parents=True)
    (tag / "global_step" / "model_states.pt").write_bytes(bytes(range(256)) * step)
    (tag / "client_state.json").write_text(json.dumps({"step": step}))
    checkpoints.seal(tag, step)
    return tag


def test_checkpoints_on_moto_s3_are_found_by_newest_valid_and_fetched(s3_home, tmp_path):
    resources, s3 = s3_home
    settings = resources["settings"]
    fs, remote = settings.object_store().filesystem(), settings.remote("checkpoints", "run-1").removeprefix("s3://")
    local = tmp_path / "ckpt"
    for step in (10, 20):
        checkpoints.publish(_sealed_tag(local, step), fs, remote)
    assert s3.get_object(Bucket=BUCKET, Key="team-a/checkpoints/run-1/latest")["Body"].read() == b"step00000020"
    assert checkpoints.newest_valid(remote, fs) == ("step00000020", [])

    # An upload cut off before its manifest is skipped, as is a tag whose object changed afterwards.
    s3.put_object(Bucket=BUCKET, Key="team-a/checkpoints/run-1/step00000030/client_state.json", Body=b"{}")
    s3.put_object(Bucket=BUCKET, Key="team-a/checkpoints/run-1/step00000020/global_step/model_states.pt",
                  Body=b"x" * (256 * 20))
    tag, skipped = checkpoints.newest_valid(remote, fs)
    assert tag == "step00000010"
    assert skipped[0] == f"step00000030 has no {checkpoints.MANIFEST}: it was not completely written"
    assert skipped[1].endswith("model_states.pt is corrupt: its sha256 differs from the manifest")

    restored = checkpoints.fetch(fs, remote, tag, tmp_path / "resume")
    assert checkpoints.problem(restored) is None
    assert (restored / "global_step" / "model_states.pt").read_bytes() == bytes(range(256)) * 10


DATA_CONFIG = {"ops": {
    "raw_documents": {"config": {"max_bytes": 20_000}},
    "cleaned_corpus": {"config": {"quality_filters": "none"}},  # tests.corpus repeats paragraphs on purpose
    "tokenizer": {"config": {"vocab_size": 400}},
    "token_shards": {"config": {"seq_len": 32, "sequences_per_shard": 8, "validation_fraction": 0.3}},
}}
DATA_TABLES = ["raw_documents", "cleaned_corpus", "deduped_corpus", "curated_corpus", "quarantine"]


@pytest.mark.slow
def test_data_graph_and_token_shards_on_moto_s3_read_back_from_the_bucket(moto_s3, home, spark, tmp_path):
    s3 = s3_client(moto_s3)
    s3.create_bucket(Bucket=BUCKET)
    resources = _s3_resources(LLMOPS_SOURCE=str(write_corpus(tmp_path / "source", docs=10)))
    result = dg.materialize([raw_documents, cleaned_corpus, deduped_corpus, curated_corpus, tokenizer, token_shards],
                            resources=resources, run_config=DATA_CONFIG)
    assert result.success

    # Every table is in the bucket, none under the home, and another delta-rs reader opens each one.
    lake: LakehouseResource = resources["lakehouse"]
    assert not any((home / "lakehouse").glob("*/_delta_log"))
    committed = result.output_for_node("curated_corpus")
    pins = resources["versioning"].get_commit(committed.commit_id)["tables"]
    assert sorted(pins) == sorted(DATA_TABLES)
    for name in DATA_TABLES:
        uri = f"s3://{BUCKET}/team-a/lakehouse/{name}"
        assert pins[name]["uri"] == uri
        table = DeltaTable(uri, version=pins[name]["delta_version"], storage_options=_other_reader_options(moto_s3))
        assert table.to_pyarrow_table().num_rows == pins[name]["rows"] > 0, name
    curated = DeltaTable(committed.table.uri, storage_options=_other_reader_options(moto_s3)).to_pyarrow_table()
    assert curated.num_rows == committed.table.rows
    assert not any("@example.org" in t for t in curated.column("text").to_pylist())  # PII was scrubbed

    # The books balance when read from the bucket (what the curated_corpus_accounting check computes).
    chain = accounting.lineage(lake, committed.table)
    assert [t.name for t in chain] == DATA_TABLES[3::-1]
    balances = accounting.step_balances(chain, lake.latest("quarantine").uri, lake.storage_options())
    assert balances and all(b.balanced for b in balances), accounting.balances_markdown(balances)

    # The shards went to the bucket; each object there matches the manifest's sha256.
    shard_set: ShardSet = result.output_for_node("token_shards")
    name = Path(shard_set.path).name
    assert shard_set.remote == f"s3://{BUCKET}/team-a/shards/{name}"
    prefix = f"team-a/shards/{name}/"
    body = s3.get_object(Bucket=BUCKET, Key=prefix + shards.MANIFEST)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == shard_set.manifest_sha256
    listed = [e for entries in json.loads(body)["splits"].values() for e in entries]
    assert listed and sorted(_keys(s3, prefix)) == sorted([prefix + shards.MANIFEST] + [prefix + e["file"] for e in listed])
    for entry in listed:
        data = s3.get_object(Bucket=BUCKET, Key=prefix + entry["file"])["Body"].read()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], entry["file"]

    # A machine without the local copy reads them from the bucket, verified, into its own home.
    original = {s: shards.read_split(shard_set.path, s) for s in shards.SPLITS}
    shutil.rmtree(shard_set.path)
    fetched = local_shards(shard_set, resources["settings"])
    assert fetched == str(home / "shards" / name)
    for split in shards.SPLITS:
        assert np.array_equal(shards.read_split(fetched, split), original[split])


def _tiny_training_inputs(root: Path) -> tuple[TokenizerArtifact, shards.ShardResult]:
    """A BPE tokenizer and packed shards built without Spark, as tests/training/conftest.py does."""
    from llm_assets.tokens import tokenizer as bpe
    from tests.tokens.sample import SENTENCES, corpus_rows

    tok = bpe.train_bpe(iter(SENTENCES), vocab_size=512)
    tok_dir, sha = bpe.save_hf_tokenizer(tok, root / "tokenizers")
    eos = tok.token_to_id(bpe.EOS_TOKEN)
    docs = [(shards.assign_split(d, 0.1), np.array(tok.encode(t).ids + [eos])) for d, t in sorted(corpus_rows(200))]
    docs.sort(key=lambda doc: doc[0])
    packed = shards.pack_shards(docs, root / "shards" / "c0ffee-tiny", seq_len=32, sequences_per_shard=64,
                                vocab_size=tok.get_vocab_size(),
                                header={"tokenizer_sha256": sha, "data_commit": "c0ffee", "seed": 0})
    return TokenizerArtifact(path=str(tok_dir), sha256=sha, vocab_size=tok.get_vocab_size()), packed


def _train(resources: dict, tok: TokenizerArtifact, shard_set: ShardSet):
    @dg.asset(name="tokenizer")
    def given_tokenizer() -> TokenizerArtifact:
        return tok

    @dg.asset(name="token_shards")
    def given_shards() -> ShardSet:
        return shard_set

    config = {"ops": {"trained_checkpoint": {"config": {
        "nproc": 1, "max_steps": 4, "save_every": 2, "micro_batch_size": 4, "log_every": 1}}}}
    result = dg.materialize([given_tokenizer, given_shards, model_catalog, base_model, trained_checkpoint],
                            resources=resources, run_config=config)
    assert result.success
    return result.output_for_node("trained_checkpoint")


@pytest.mark.slow
def test_training_publishes_checkpoints_to_moto_s3_and_a_new_machine_resumes_from_the_bucket(s3_home, home,
                                                                                             tmp_path):
    resources, s3 = s3_home
    settings = resources["settings"]
    fs = settings.object_store().filesystem()
    tok, packed = _tiny_training_inputs(tmp_path / "inputs")
    remote_shards = settings.remote("shards", packed.path.name)
    shards.publish_shards(packed.path, fs, remote_shards.removeprefix("s3://"))
    shard_set = ShardSet(path=str(packed.path), manifest_sha256=packed.manifest_sha256, data_commit="c0ffee",
                         seq_len=32, remote=remote_shards)

    first = _train(resources, tok, shard_set)
    run_name = Path(first.checkpoint_dir).name
    remote = settings.remote("checkpoints", run_name).removeprefix("s3://")
    assert [t.name for t in checkpoints.tags(first.checkpoint_dir)] == ["step00000002", "step00000004"]
    assert checkpoints.newest_valid(remote, fs) == ("step00000004", [])
    assert checkpoints.problem(f"{remote}/step00000002", fs) is None
    assert s3.get_object(Bucket=BUCKET, Key=f"team-a/checkpoints/{run_name}/latest")["Body"].read() == b"step00000004"

    # A new machine: another home, no shards or checkpoints of its own. Step 4 in the bucket is damaged,
    # so the run resumes from step 2 and trains the last two steps again.
    shutil.rmtree(packed.path)
    key = next(k for k in _keys(s3, f"team-a/checkpoints/{run_name}/step00000004/") if k.endswith(".pt"))
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"damaged")
    other_home = tmp_path / "other-home"
    second = _train(_s3_resources(LLMOPS_HOME=str(other_home)), tok, shard_set)
    assert Path(second.checkpoint_dir) == other_home / "checkpoints" / run_name
    result = json.loads((Path(second.checkpoint_dir) / "result.json").read_text())
    assert (second.steps, result["trained_steps_this_launch"]) == (4, 2)  # from step 2, not from 0
    assert (other_home / "shards" / packed.path.name / shards.MANIFEST).exists()  # fetched from the bucket
    assert checkpoints.newest_valid(remote, fs) == ("step00000004", [])  # republished whole


def test_checkpoint_sync_on_moto_s3_publishes_sealed_tags_once_and_fetches_the_newest_sound_one(s3_home, tmp_path):
    from llm_assets.training import checkpoint_sync

    resources, s3 = s3_home
    settings = resources["settings"]
    fs, remote = settings.object_store().filesystem(), settings.remote("checkpoints", "run-2").removeprefix("s3://")
    local = tmp_path / "ckpt"
    _sealed_tag(local, 10)
    (local / "step00000020").mkdir()  # still being written: no manifest yet
    (local / "step00000020" / "client_state.json").write_text(json.dumps({"step": 20}))
    assert checkpoint_sync.publish_new(local, fs, remote) == ["step00000010"]
    assert checkpoint_sync.publish_new(local, fs, remote) == []  # already there
    checkpoints.seal(local / "step00000020", 20)
    assert checkpoint_sync.publish_new(local, fs, remote) == ["step00000020"]

    s3.put_object(Bucket=BUCKET, Key="team-a/checkpoints/run-2/step00000020/client_state.json", Body=b"{}")
    tag, skipped = checkpoint_sync.fetch_newest(fs, remote, tmp_path / "new-machine")
    assert tag == "step00000010" and "client_state.json" in skipped[0]
    assert [t.name for t in checkpoints.tags(tmp_path / "new-machine")] == ["step00000010"]  # the bad one removed
    assert checkpoint_sync.fetch_newest(fs, settings.remote("checkpoints", "none").removeprefix("s3://"),
                                        tmp_path / "empty") == (None, [])
