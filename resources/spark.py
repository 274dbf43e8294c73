"""Spark sessions from settings: local[*] on a laptop, a standalone cluster or Spark Connect at scale."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dagster as dg
from pyspark import SparkContext
from pyspark.sql import SparkSession

from resources import spark_cds

# Delta needs microsecond UTC timestamps, not Spark's INT96 default. A Spark Connect server needs these
# too: a Connect client can set only the SQL ones.
BASE_CONF = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.driver.extraJavaOptions": "-XX:-UsePerfData",
    "spark.executor.extraJavaOptions": "-XX:-UsePerfData",
}
# A local master does all its work in the driver JVM, a short-lived one (a process per Dagster step): the C1
# JIT alone halves its start-up CPU (benchmarks/tokenize.py). A long local job may want C2 back: set
# spark.driver.extraJavaOptions in the Spark settings.
LOCAL_CONF = {"spark.driver.extraJavaOptions": "-XX:-UsePerfData -XX:TieredStopAtLevel=1"}


def build_session(master: str, conf: dict[str, str], scratch_dir: str, class_data_sharing: bool = True) -> SparkSession:
    """Get or create the session for `master` (`local[*]`, `spark://h:p` or `sc://h:p`).

    A process holds one classic SparkContext: asking for another master than the running one's raises
    rather than silently reusing it (any two local masters count as the same). A driver JVM started here
    maps this machine's class archive when `class_data_sharing` (see resources/spark_cds.py).
    """
    Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    settings = {**BASE_CONF, **(LOCAL_CONF if master.startswith("local") else {}), **conf}
    if master.startswith("sc://"):
        builder = SparkSession.builder.remote(master)
        # A Connect client can set SQL settings only; the others are the server's (see BASE_CONF).
        settings = {k: v for k, v in settings.items() if k.startswith("spark.sql.")}
    else:
        running = SparkContext._active_spark_context
        if running is not None and running.master != master and not (
                running.master.startswith("local") and master.startswith("local")):
            raise RuntimeError(f"Spark master {master!r} requested, but this process already runs a SparkContext "
                               f"on {running.master!r}: stop that session first, or use another process")
        builder = SparkSession.builder.master(master).config("spark.local.dir", scratch_dir)
        java_options = settings.get("spark.driver.extraJavaOptions", "")
        if (class_data_sharing and SparkContext._gateway is None and "SharedArchiveFile" not in java_options
                and "spark.driver.extraClassPath" not in settings):  # the archive is for Spark's own class path
            settings["spark.driver.extraJavaOptions"] = f"{java_options} {spark_cds.driver_java_options()}".strip()
        # Not realpath: that resolves a venv's symlink to the base interpreter, without the venv's packages.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.appName("llmops").getOrCreate()


class SparkResource(dg.ConfigurableResource):
    """A Spark session; `master` and `conf` are settings, so the same assets run on a cluster."""

    master: str = "local[*]"
    conf: dict[str, str] = {"spark.sql.shuffle.partitions": "4", "spark.driver.memory": "4g"}
    scratch_dir: str = "/tmp/llmops-spark"
    class_data_sharing: bool = True
    """Map the driver JVM's classes from an archive made once per machine (resources/spark_cds.py)."""

    def session(self) -> SparkSession:
        return build_session(self.master, self.conf, self.scratch_dir, self.class_data_sharing)
