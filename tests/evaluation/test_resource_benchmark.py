"""The `resource_benchmark` asset on a real tiny model: `transformers serve` on 127.0.0.1 plus in-process runs."""

import json
import shutil

import dagster as dg
import pytest
from PIL import Image

from llm_assets.artifacts import ExportedModel
from llm_assets.deployment import processes
from llm_assets.evaluation import resource_bench as bench
from llm_assets.evaluation.assets import ResourceBenchmarkConfig, resource_benchmark
from resources.serving import ServingResource
from resources.settings import SettingsResource
from resources.tracking import TrackingResource
from tests.tiny_model import build_tiny_model

CONFIG = ResourceBenchmarkConfig(concurrency=[1, 3], rounds=2, max_tokens=8, in_process=["fp32", "int8"])


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("bench-home")


@pytest.fixture(scope="module")
def model_dir(home):
    return build_tiny_model(home / "models" / "tiny", train_steps=60)


@pytest.fixture(scope="module")
def resources(home):
    return {"serving": ServingResource(run_dir=str(home / "run"), startup_timeout=180),
            "settings": SettingsResource(home=str(home)),
            "tracking": TrackingResource(tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
                                         artifact_root=str(home / "mlruns"))}


@pytest.fixture(scope="module")
def benchmarked(resources, model_dir):
    tracking = resources["tracking"]
    run_id = tracking.start_run("bench-test", {})
    exported = ExportedModel(path=str(model_dir), registered_name="tiny", version="1", mlflow_run_id=run_id,
                             data_commit="c0")
    out = resource_benchmark(dg.build_asset_context(resources=resources), config=CONFIG, exported_model=exported)
    return out, exported


def test_each_level_has_its_requests_and_consistent_latencies(benchmarked):
    value = benchmarked[0].value
    rows = {(r["precision"], r["mode"]): r for r in value["rows"]}
    assert list(rows) == [("fp32", "served"), ("fp32", "inprocess"), ("int8", "inprocess")]
    assert [lv["concurrency"] for lv in rows["fp32", "served"]["levels"]] == [1, 3]
    for (_, mode), row in rows.items():
        for lv in row["levels"]:
            assert lv["n"] == CONFIG.rounds * lv["concurrency"]
            assert 0 < lv["ttft_p50_s"] <= lv["ttft_p95_s"]
            assert 0 < lv["latency_p50_s"] <= lv["latency_p95_s"]
            assert lv["ttft_p50_s"] <= lv["latency_p50_s"] and lv["ttft_p95_s"] <= lv["latency_p95_s"]
            assert 0 < lv["tokens"] <= lv["n"] * CONFIG.max_tokens
            assert lv["tokens_per_s"] > 0
    assert value["fp32_served_n_c3"] == 6 and value["int8_inprocess_n_c1"] == 2


def test_memory_and_size_on_disk(benchmarked, model_dir):
    rows = {(r["precision"], r["mode"]): r for r in benchmarked[0].value["rows"]}
    files = sum(f.stat().st_size for f in model_dir.iterdir() if f.is_file())
    assert rows["fp32", "served"]["size_bytes"] == rows["fp32", "inprocess"]["size_bytes"] == files
    assert 0 < rows["int8", "inprocess"]["size_bytes"] < files
    for row in rows.values():
        assert row["peak_rss_mb"] * bench.MB > row["size_bytes"]
    served = rows["fp32", "served"]
    assert served["peak_rss_mb"] >= served["idle_rss_mb"] > 0
    if shutil.which("nvidia-smi") is None:
        assert served["gpu_memory_mb"] is None


def test_report_plot_metadata_and_mlflow(benchmarked, resources):
    out, exported = benchmarked
    meta = out.metadata
    report = json.loads(open(out.value["report_path"]).read())
    assert [r["precision"] for r in report["rows"]] == ["fp32", "fp32", "int8"]
    assert Image.open(meta["plot"].value).format == "PNG"
    assert len(meta["results"].value.splitlines()) == 2 + 4  # header, rule, 2 served levels, 2 in-process rows
    assert meta["requests"].value == 2 + 6 + 2 + 2
    logged = resources["tracking"].client().get_run(exported.mlflow_run_id).data.metrics
    assert logged["bench_fp32_served_tokens_per_s_c3"] == pytest.approx(out.value["fp32_served_tokens_per_s_c3"])
    assert "bench_int8_inprocess_peak_rss_mb" in logged


def test_the_temporary_backend_is_stopped(benchmarked, resources):
    assert processes.status(f"{resources['serving'].run_dir}/resource_benchmark") == {}


def test_level_stats_on_hand_written_timings():
    timings = [bench.Timing(0.1, 1.0, 4), bench.Timing(0.2, 2.0, 8), bench.Timing(0.3, 3.0, 8)]
    stats = bench.level_stats(timings, wall_s=4.0, concurrency=2)
    assert (stats["n"], stats["tokens"], stats["tokens_per_s"]) == (3, 20, 5.0)
    assert stats["ttft_p50_s"] == pytest.approx(0.2) and stats["latency_p50_s"] == pytest.approx(2.0)
    assert stats["latency_p95_s"] == pytest.approx(2.9)


def test_dir_bytes_counts_only_the_files_directly_inside(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    (tmp_path / "int8").mkdir()
    (tmp_path / "int8" / "b.bin").write_bytes(b"x" * 5)
    assert bench.dir_bytes(tmp_path) == 10


def test_a_workload_past_the_context_window_is_refused(model_dir):
    with pytest.raises(ValueError, match="exceeds the context of 128 tokens"):
        bench.check_context(model_dir, ["The quick brown fox"], max_tokens=200)


def test_unknown_precision_is_refused(model_dir):
    with pytest.raises(ValueError, match="precision must be one of"):
        bench.bench_in_process(model_dir, "fp16", ["hi"])
