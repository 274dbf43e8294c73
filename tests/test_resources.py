"""Settings reach the resources: Spark master and executor settings come from the environment."""

import os

import pytest

from resources import build_resources, spark_conf


def test_spark_settings_come_from_the_environment(tmp_path):
    spark = build_resources({"LLMOPS_HOME": str(tmp_path), "SPARK_MASTER": "spark://10.0.0.5:7077",
                             "LLMOPS_SPARK_CONF": "spark.executor.memory=8g, spark.executor.cores=4"})["spark"]
    assert spark.master == "spark://10.0.0.5:7077"
    assert spark.conf["spark.executor.memory"] == "8g" and spark.conf["spark.executor.cores"] == "4"
    assert spark.conf["spark.sql.shuffle.partitions"] == "4"  # defaults stay unless overridden


def test_bad_spark_conf_names_the_setting():
    with pytest.raises(ValueError, match="LLMOPS_SPARK_CONF"):
        spark_conf("spark.executor.memory")


def test_vllm_backend_command_carries_the_quantization_setting_with_a_standin_vllm_on_path(tmp_path, monkeypatch):
    standin = tmp_path / "bin" / "vllm"  # vLLM is CUDA-only: a stand-in executable, never run
    standin.parent.mkdir()
    standin.write_text("#!/bin/sh\nexit 1\n")
    standin.chmod(0o755)
    monkeypatch.setenv("PATH", f"{standin.parent}:{os.environ['PATH']}")
    serving = build_resources({"LLMOPS_HOME": str(tmp_path), "LLMOPS_SERVING_BACKEND": "vllm",
                               "LLMOPS_VLLM_QUANTIZATION": "fp8"})["serving"]
    cmd = serving.backend_command(str(tmp_path), 8001)
    assert cmd[1:3] == ["serve", str(tmp_path.resolve())] and cmd[-2:] == ["--quantization", "fp8"]
    plain = build_resources({"LLMOPS_HOME": str(tmp_path), "LLMOPS_SERVING_BACKEND": "vllm"})["serving"]
    assert "--quantization" not in plain.backend_command(str(tmp_path), 8001)


def test_local_driver_jvm_runs_with_the_c1_jit_only(spark):
    args = list(spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert "-XX:TieredStopAtLevel=1" in args
