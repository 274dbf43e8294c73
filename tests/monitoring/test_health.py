"""Component health rows on real components: HTTP servers, a LanceDB index, an MLflow store, Delta tables."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llm_assets.deployment.processes import free_port
from llm_assets.evaluation import rag
from llm_assets.monitoring import health
from resources.tracking import TrackingResource


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" and self.server.up else 503)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", free_port()), _Health)
    srv.up = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()


def test_http_and_replica_health(server, tmp_path):
    url = f"http://127.0.0.1:{server.server_address[1]}"
    dead = f"http://127.0.0.1:{free_port()}"
    assert health.http_health("gateway", "gateway", url)["healthy"]
    server.up = False
    sick = health.http_health("gateway", "gateway", url)
    assert not sick["healthy"] and "503" in sick["detail"]
    server.up = True
    (tmp_path / "routes.json").write_text(json.dumps({"models": {"m": {"versions": {
        "3": {"weight": 0.9, "replicas": [url, dead]}, "4": {"weight": 0.1, "replicas": [url]}}}}}))
    rows = health.replica_health(tmp_path / "routes.json", timeout=1)
    assert [r["healthy"] for r in rows] == [True, False, True]
    assert rows[1]["component"] == f"replica m v3 {dead}" and "unreachable" in rows[1]["detail"]


def test_vector_db_fresh_stale_and_unreachable(tmp_path):
    passages = [rag.Passage(f"p{i}", f"d{i}", f"passage number {i} about tokenizers and shards") for i in range(4)]
    rag.build_index(passages, tmp_path / "vector", "commit-a", passages_total=4, documents=4, passage_words=20)
    fresh = health.vector_db_health(tmp_path / "vector", rag.TABLE, "commit-a",
                                    lambda t: rag.probe_latency(t, "tokenizers"))
    numbers = json.loads(fresh["numbers"])
    assert fresh["healthy"] and numbers["rows"] == 4 and numbers["search_ms"] > 0
    stale = health.vector_db_health(tmp_path / "vector", rag.TABLE, "commit-b")
    assert not stale["healthy"] and "stale: built from data commit commit-a, latest is commit-b" in stale["detail"]
    gone = health.vector_db_health(tmp_path / "nowhere", rag.TABLE, "commit-a")
    assert not gone["healthy"] and "unreachable" in gone["detail"]


def test_mlflow_and_lakehouse_health(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert not health.mlflow_health(uri)["healthy"]  # no store yet
    TrackingResource(tracking_uri=uri, artifact_root=str(tmp_path / "mlruns")).experiment_id()
    assert health.mlflow_health(uri)["healthy"]
    assert not health.mlflow_health(f"http://127.0.0.1:{free_port()}", timeout=1)["healthy"]
    assert not health.lakehouse_health(tmp_path / "lake", [])["healthy"]
    (tmp_path / "lake" / "served_requests" / "_delta_log").mkdir(parents=True)  # a table whose log is garbage
    (tmp_path / "lake" / "served_requests" / "_delta_log" / "00000000000000000000.json").write_text("{oops")
    broken = health.lakehouse_health(tmp_path / "lake", ["served_requests"])
    assert not broken["healthy"] and "served_requests" in broken["detail"]
