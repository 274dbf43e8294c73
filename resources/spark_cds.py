"""A class-data-sharing (CDS) archive of the Spark driver JVM's classes, made once per machine.

Every Dagster step that uses Spark starts a driver JVM, which loads and verifies thousands of Spark
classes. With them mapped from an archive, a local session starts in 2.6 s instead of 6.0 and its
first query takes 1.4 s instead of 3.9 (2-core machine, JDK 17; benchmarks/tokenize.py).

The archive fits one Java build and one set of Spark jars, so its name carries a hash of both; a JVM
that cannot use it (another heap mode, another class path) runs without it. The first session that
finds none starts `build` in a background process and goes on without:
that process runs a small workload in a throwaway session under `-XX:ArchiveClassesAtExit`, checks
the result in a second session with `-Xshare:on` (a truncated archive crashes a JVM), and renames it
into place. A lock file keeps to one build at a time; a `.failed` file stops retries (delete it to
try again). Set LLMOPS_SPARK_CDS=0 to go without.

Each session that maps an archive touches it; a finished build deletes the archives (~190 MB each) that
no session has used for `UNUSED_DAYS`, as an upgraded Java or pyspark leaves its old ones behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUILD = "import sys; from resources.spark_cds import build; build(sys.argv[1])"
"""`python -c BUILD <archive>`: a build in a process of its own, which stops its JVM to write the archive."""
CHECK = "import sys; from resources.spark_cds import check; check(sys.argv[1])"
"""`python -c CHECK <archive>`: exits non-zero unless a new JVM maps the archive."""
LOCK_STALE_S = 900
"""A build's lock older than this is from a build that died: the next session may start another."""
UNUSED_DAYS = 30


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llmops" / "spark-cds"


CLASS_PATH_ENV = ("SPARK_CONF_DIR", "HADOOP_CONF_DIR", "YARN_CONF_DIR", "SPARK_DIST_CLASSPATH", "SPARK_CLASSPATH")
"""Environment that Spark's launcher puts on the driver's class path, which must be the archive's."""


def archive_path() -> Path:
    """This machine's archive for the `java` Spark launches, the installed pyspark jars and this environment's
    class path."""
    import pyspark

    home = os.environ.get("JAVA_HOME")
    java = (Path(home) / "bin" / "java" if home else Path(shutil.which("java") or "java")).resolve()
    jars = Path(pyspark.__file__).parent / "jars"
    key = "|".join([str(java), str(java.stat().st_mtime_ns if java.exists() else 0), str(jars),
                    str(jars.stat().st_mtime_ns if jars.exists() else 0),
                    *(f"{name}={os.environ.get(name, '')}" for name in CLASS_PATH_ENV)])
    return cache_dir() / f"spark-{pyspark.__version__}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsa"


def share_options(path: Path) -> str:
    # Quiet: a JVM that cannot map the archive warns on every start, and runs as well without it.
    return f"-XX:SharedArchiveFile={path} -Xlog:cds=off,cds+dynamic=off"


def driver_java_options() -> str:
    """JVM options that map this machine's archive; "" while there is none (and a build is started)."""
    path = archive_path()
    try:
        os.utime(path)  # marks it used, for `remove_unused`
    except FileNotFoundError:
        start_build(path)
        return ""
    except OSError:  # a read-only cache: the archive serves all the same
        pass
    return share_options(path)


def start_build(path: Path) -> bool:
    """Start building `path` in a background process unless one is running or a build failed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.with_suffix(".failed").exists():
        return False
    lock = path.with_suffix(".lock")
    try:
        os.close(os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        try:
            if time.time() - lock.stat().st_mtime > LOCK_STALE_S:
                lock.unlink()
        except FileNotFoundError:
            pass
        return False
    try:
        with path.with_suffix(".log").open("w") as log:
            subprocess.Popen([sys.executable, "-c", BUILD, str(path)], stdin=subprocess.DEVNULL, stdout=log,
                             stderr=subprocess.STDOUT, start_new_session=True)
    except OSError:
        lock.unlink(missing_ok=True)
        return False
    return True


def _workload(spark, scratch: str) -> None:
    """What llmops' Spark steps do, so their classes are loaded: Parquet, shuffles, Arrow to Python."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = spark.createDataFrame([(f"doc-{i}", f"text {i % 97} " * (i % 5 + 1)) for i in range(2000)],
                               "doc_id string, text string")
    df.write.parquet(f"{scratch}/docs")
    docs = spark.read.parquet(f"{scratch}/docs")
    keyed = docs.withColumn("key", F.sha2("text", 256)).withColumn("n", F.length("text"))
    keyed.groupBy("key").agg(F.count("*").alias("copies"), F.min("doc_id")).orderBy("copies").collect()
    keyed.withColumn("rank", F.row_number().over(Window.partitionBy("key").orderBy("doc_id"))).count()
    keyed.join(keyed.select("doc_id", F.col("n").alias("m")), "doc_id", "left_anti").count()
    list(docs.mapInArrow(lambda batches: batches, docs.schema).toLocalIterator())
    docs.mapInPandas(lambda frames: frames, docs.schema).toPandas()
    docs.repartition(4).write.mode("overwrite").parquet(f"{scratch}/again")


def _session(java_options: str, scratch: str):
    from resources.spark import LOCAL_CONF, build_session

    conf = {"spark.driver.extraJavaOptions": f"{LOCAL_CONF['spark.driver.extraJavaOptions']} {java_options}"}
    return build_session("local[2]", conf, scratch, class_data_sharing=False)


def _stop_jvm(spark) -> None:
    """Stop the session and wait for its JVM to exit (the archive is written on exit)."""
    from pyspark import SparkContext

    spark.stop()
    jvm = SparkContext._gateway.proc
    jvm.stdin.close()  # the gateway JVM exits when its stdin closes
    jvm.wait(timeout=600)


def build(path: str | Path) -> None:
    """Dump the archive of a workload's classes, check that a JVM maps it, then move it to `path`."""
    from pyspark import SparkContext

    if SparkContext._gateway is not None:
        raise RuntimeError("build the archive in a process of its own: this one already runs a JVM")
    path = Path(path)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        with tempfile.TemporaryDirectory(prefix="spark-cds-") as scratch:
            spark = _session(f"-XX:ArchiveClassesAtExit={tmp}", scratch)
            _workload(spark, scratch)
            _stop_jvm(spark)
        if not tmp.exists():
            raise RuntimeError(f"the JVM wrote no archive at {tmp}")
        check = subprocess.run([sys.executable, "-c", CHECK, str(tmp)], capture_output=True, text=True, timeout=600)
        if check.returncode != 0:
            raise RuntimeError(f"a JVM could not map {tmp}: {check.stdout[-2000:]}{check.stderr[-2000:]}")
        tmp.rename(path)
        remove_unused(path.parent)
    except BaseException as e:
        path.with_suffix(".failed").write_text(f"{e!r}\n")
        raise
    finally:
        tmp.unlink(missing_ok=True)
        path.with_suffix(".lock").unlink(missing_ok=True)


def remove_unused(directory: Path, days: float = UNUSED_DAYS) -> None:
    """Delete the archives in `directory` (and their build files) that no session has used for `days`."""
    cutoff = time.time() - days * 86400
    for archive in directory.glob("spark-*.jsa"):
        try:
            if archive.stat().st_mtime < cutoff:
                for leftover in (archive, *(archive.with_suffix(s) for s in (".log", ".failed"))):
                    leftover.unlink(missing_ok=True)
        except OSError:  # removed by another build meanwhile, or not ours to remove
            pass


def check(archive: str) -> None:
    """A session that must map `archive` (`-Xshare:on` refuses to start otherwise) runs a query."""
    with tempfile.TemporaryDirectory(prefix="spark-cds-") as scratch:
        spark = _session(f"-XX:SharedArchiveFile={archive} -Xshare:on -XX:ErrorFile={scratch}/hs_err_%p.log", scratch)
        assert spark.range(10).count() == 10
        _stop_jvm(spark)
