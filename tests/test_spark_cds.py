"""The Spark driver JVM's class archive: built once, checked before use, mapped by later sessions."""

import os
import subprocess
import sys
import time

import pytest

from resources import build_resources, spark_cds

SESSION = """
import sys
from resources.spark import build_session
spark = build_session("local[1]", {"spark.driver.extraJavaOptions": "-Xlog:class+load=info:file=" + sys.argv[1]},
                      sys.argv[2], class_data_sharing=sys.argv[3] == "1")
assert spark.range(5).count() == 5
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """An XDG cache with this machine's archive, built here (as a session's background build does)."""
    cache = tmp_path_factory.mktemp("xdg-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(cache))
        archive = spark_cds.archive_path()
    archive.parent.mkdir(parents=True)
    for name in ("spark-0.0.0-stale.jsa", "spark-0.0.0-stale.log", "spark-0.0.0-recent.jsa"):  # another pyspark's
        (archive.parent / name).write_bytes(b"archive")
    month_ago = time.time() - (spark_cds.UNUSED_DAYS + 1) * 86400
    os.utime(archive.parent / "spark-0.0.0-stale.jsa", (month_ago, month_ago))
    subprocess.run([sys.executable, "-c", spark_cds.BUILD, str(archive)], check=True, capture_output=True,
                   env={**os.environ, "XDG_CACHE_HOME": str(cache)}, timeout=900)
    return cache


def classes_loaded(cache, tmp_path, sharing: bool) -> list[str]:
    log = tmp_path / f"classes-{sharing}.log"
    subprocess.run([sys.executable, "-c", SESSION, str(log), str(tmp_path / "scratch"), "1" if sharing else "0"],
                   env={**os.environ, "XDG_CACHE_HOME": str(cache)}, check=True, capture_output=True, timeout=600)
    return log.read_text().splitlines()


def test_a_new_session_maps_spark_classes_from_the_archive(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    archive = spark_cds.archive_path()
    assert archive.exists()
    assert not archive.with_suffix(".lock").exists() and not archive.with_suffix(".failed").exists()
    os.utime(archive, (0, 0))
    assert spark_cds.driver_java_options() == spark_cds.share_options(archive)
    assert time.time() - archive.stat().st_mtime < 600  # marked used

    shared = [line for line in classes_loaded(cache, tmp_path, True) if "shared objects file (top)" in line]
    assert len(shared) > 1000 and any("org.apache.spark.sql." in line for line in shared)
    assert not [line for line in classes_loaded(cache, tmp_path, False) if "shared objects file (top)" in line]


def test_a_build_removes_the_archives_no_session_used_for_a_month(cache, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    left = sorted(p.name for p in spark_cds.archive_path().parent.glob("spark-0.0.0-*"))
    assert left == ["spark-0.0.0-recent.jsa"]


def test_a_truncated_archive_fails_the_check_that_guards_its_rename(cache, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    truncated = tmp_path / "truncated.jsa"
    truncated.write_bytes(spark_cds.archive_path().read_bytes()[:1_000_000])  # a JVM mapping this dies of SIGBUS
    check = subprocess.run([sys.executable, "-c", spark_cds.CHECK, str(truncated)], capture_output=True, timeout=600)
    assert check.returncode != 0


def test_a_build_in_progress_or_failed_starts_no_other(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    archive = spark_cds.archive_path()
    archive.parent.mkdir(parents=True)
    lock, failed = archive.with_suffix(".lock"), archive.with_suffix(".failed")

    lock.touch()
    assert spark_cds.driver_java_options() == "" and not spark_cds.start_build(archive)
    assert lock.exists()  # a fresh lock stays: its build is running
    old = time.time() - spark_cds.LOCK_STALE_S - 60
    os.utime(lock, (old, old))
    assert not spark_cds.start_build(archive) and not lock.exists()  # a stale one is cleared for the next session

    failed.write_text("RuntimeError('no archive')\n")
    assert not spark_cds.start_build(archive) and not lock.exists()


def test_the_archive_is_named_for_the_class_path_a_driver_gets(tmp_path, monkeypatch):
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    default = spark_cds.archive_path()
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path))  # the launcher puts it first on the class path
    assert spark_cds.archive_path() != default


def test_class_data_sharing_is_a_setting(tmp_path):
    assert build_resources({"LLMOPS_HOME": str(tmp_path)})["spark"].class_data_sharing
    assert not build_resources({"LLMOPS_HOME": str(tmp_path), "LLMOPS_SPARK_CDS": "0"})["spark"].class_data_sharing
