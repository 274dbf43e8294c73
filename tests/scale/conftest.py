"""Real servers for the scale-out tests, on 127.0.0.1: a PostgreSQL cluster and an S3 server (moto).

PostgreSQL is Debian's (`make test` installs the `postgresql` package when `initdb`/`pg_ctl` are missing).
`initdb` refuses to run as root, so under root the cluster belongs to the `postgres` user (else `nobody`)
and lives in a directory of its own under /tmp, since pytest's tmp dirs are closed to other users.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from tests.webui import free_port

PG_USER, PG_PASSWORD = "llmops", "llmops"


def pg_bin(name: str) -> str | None:
    """A PostgreSQL program: on PATH, else in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _os_user() -> str | None:
    """The user that owns the cluster: None (this one) unless this is root, which initdb refuses."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    raise RuntimeError("running as root, and there is no `postgres` or `nobody` user to own a PostgreSQL cluster")


class Postgres:
    """A throwaway PostgreSQL cluster: `initdb` + `pg_ctl`, TCP on 127.0.0.1:`port`, trust authentication."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            pytest.skip("PostgreSQL's initdb/pg_ctl are not installed (`make test` installs Debian's postgresql)")
        self.user = _os_user()
        self.root = Path(tempfile.mkdtemp(prefix="llmops-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        if self.user:
            os.chmod(self.root, 0o755)
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run(self.initdb, "-D", str(self.data), "-U", PG_USER, "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, *argv: str) -> None:
        done = subprocess.run(argv, user=self.user, cwd=self.root, capture_output=True, text=True,
                              env={**os.environ, "LC_ALL": "C.UTF-8"}, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", opts, "-w",
                  "-t", "60", "start")

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def create_database(self, name: str) -> None:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=self.port, user=PG_USER, password=PG_PASSWORD,
                                dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        conn.close()

    def url(self, db: str) -> str:
        return f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{db}"

    def log_tail(self, chars: int = 3000) -> str:
        log = self.root / "server.log"
        return log.read_text(errors="replace")[-chars:] if log.exists() else ""

    def remove(self) -> None:
        if self.running():
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture
def postgres():
    """A running PostgreSQL server on 127.0.0.1 (its own cluster, removed afterwards)."""
    server = Postgres()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def moto_s3(monkeypatch, tmp_path):
    """moto's S3 server (the stand-in for S3: no S3 here) on 127.0.0.1; yields its endpoint URL.

    Its own process: delta-rs holds the GIL during some requests, which would stall a server thread of
    this one. The AWS_* settings of llmops, MLflow and boto3 point at it, with throwaway keys.
    """
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "moto.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)

    def up() -> bool:
        assert proc.poll() is None, f"moto_server exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
        try:
            return httpx.get(f"{endpoint}/moto-api/", timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, "moto S3 server", timeout=60, every=0.5)
        yield endpoint
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing")


def wait_until(ready, what: str, timeout: float = 180, every: float = 1.0, log=lambda: ""):
    """Poll `ready()` until it returns something truthy; TimeoutError naming `what` (with `log()`) otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"no {what} after {timeout:.0f} s\n{log()}")
