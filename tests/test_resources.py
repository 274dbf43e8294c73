"""Settings reach the resources: Spark master and executor settings come from the environment."""

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
