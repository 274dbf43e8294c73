"""Tracking through a real `mlflow server`: runs and the registry in PostgreSQL, artifacts in object storage.

The server runs on 127.0.0.1 with `--backend-store-uri postgresql+psycopg2://…` and
`--artifacts-destination s3://…` on moto's S3 server (the stand-in for S3, named in the test). llmops'
TrackingResource comes from `build_resources` with only MLFLOW_TRACKING_URI set, as a deployment sets it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from resources import build_resources
from tests.scale.conftest import s3_client, wait_until
from tests.webui import free_port

pytestmark = pytest.mark.slow

BUCKET = "mlflow-artifacts"


@pytest.fixture
def mlflow_server(postgres, moto_s3, tmp_path):
    """`mlflow server` on Postgres and moto S3; yields its http:// URL."""
    postgres.create_database("mlflow")
    s3_client(moto_s3).create_bucket(Bucket=BUCKET)
    port = free_port()
    # The server's own S3 client (boto3) finds moto through MLFLOW_S3_ENDPOINT_URL and the AWS_* keys.
    env = {**os.environ, "MLFLOW_S3_ENDPOINT_URL": moto_s3, "TMPDIR": str(tmp_path)}
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = tmp_path / "mlflow.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server",
                                 "--backend-store-uri", postgres.url("mlflow").replace("postgresql://",
                                                                                       "postgresql+psycopg2://"),
                                 "--artifacts-destination", f"s3://{BUCKET}/llmops", "--host", "127.0.0.1",
                                 "--port", str(port), "--workers", "1"],
                                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert proc.poll() is None, f"mlflow server exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
        try:
            return httpx.get(f"{url}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, "healthy mlflow server", timeout=240, log=lambda: log_path.read_text()[-4000:])
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_tracking_resource_logs_to_mlflow_server_on_postgres_and_moto_s3(mlflow_server, moto_s3, home, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_S3_ENDPOINT_URL"}  # the client needs no S3 access
    tracking = build_resources({**env, "MLFLOW_TRACKING_URI": mlflow_server})["tracking"]
    assert tracking.tracking_uri == mlflow_server

    run_id = tracking.start_run("scale-test", tags={"llmops.stage": "training"})
    client = tracking.client()
    for step, loss in enumerate([3.5, 2.25, 1.5]):
        client.log_metric(run_id, "loss", loss, step=step)
    report = tmp_path / "report.txt"
    report.write_bytes(b"eval: 0.75\n")
    client.log_artifact(run_id, str(report), artifact_path="reports")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"n_layer": 2}')
    version = tracking.register_model("scale-test-model", str(model_dir), run_id)
    client.set_terminated(run_id)

    # A fresh client of the server sees the run, its metric history, the artifact and the model version.
    reader = MlflowClient(mlflow_server, mlflow_server)
    run = reader.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["llmops.stage"] == "training"
    assert [m.value for m in reader.get_metric_history(run_id, "loss")] == [3.5, 2.25, 1.5]
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server, not a local path
    assert [a.path for a in reader.list_artifacts(run_id, "reports")] == ["reports/report.txt"]
    assert Path(reader.download_artifacts(run_id, "reports/report.txt", str(tmp_path / "back"))).read_bytes() \
        == b"eval: 0.75\n"
    assert reader.get_model_version("scale-test-model", version).run_id == run_id

    # The bytes live in the bucket, and nothing landed under the local home's mlruns/.
    s3 = s3_client(moto_s3)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="llmops/")["Contents"]]
    (report_key,) = [k for k in keys if k.endswith(f"{run_id}/artifacts/reports/report.txt")]
    assert s3.get_object(Bucket=BUCKET, Key=report_key)["Body"].read() == b"eval: 0.75\n"
    assert any(k.endswith("artifacts/model/config.json") for k in keys)
    assert not (home / "mlruns").exists()
