"""An object-storage home: Delta tables, token shards and checkpoints under `s3://bucket/prefix`.

moto's S3 server on 127.0.0.1 stands in for S3 (hence `on_moto_s3` in the names); everything else is
real: the resources come from `build_resources` with LLMOPS_STORAGE_URI and the AWS_* settings, Spark
writes, delta-rs commits to the bucket, and a second reader (delta-rs with its own options, boto3) checks
what landed there.
"""

from __future__ import annotations

import json
import os

import dagster as dg
import numpy as np
import pytest
from deltalake import DeltaTable

from llm_assets.tokens import shards
from llm_assets.training import checkpoints
from resources import build_resources
from resources.lakehouse import LakehouseResource
from resources.spark import SparkResource
from tests.scale.conftest import s3_client

BUCKET = "llmops-home"


@pytest.fixture
def s3_home(moto_s3, home):
    """Resources whose storage home is s3://llmops-home/team-a on moto; yields (resources, boto3 client)."""
    s3 = s3_client(moto_s3)
    s3.create_bucket(Bucket=BUCKET)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return build_resources({**env, "LLMOPS_STORAGE_URI": f"s3://{BUCKET}/team-a"}), s3


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
