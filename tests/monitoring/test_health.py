"""Component health rows on real components: HTTP servers, a LanceDB index, an MLflow store, Delta tables, and
the infra_health asset with the re-index sensor on a real Dagster instance."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest

from llm_assets.deployment.processes import free_port
from llm_assets.evaluation import rag
from llm_assets.monitoring import health
from llm_assets.monitoring.assets import infra_health
from resources.tracking import TrackingResource
from sensors.monitoring import make_reindex_sensor


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


TOPICS = ["The tokenizer splits raw text into subword units before training begins.",
          "Sourdough bread needs a starter culture fed with flour and water daily.",
          "Glaciers carve deep valleys as they slowly move down mountain slopes.",
          "The violinist tuned each string carefully before the evening concert.",
          "Volcanic eruptions release ash clouds that can disrupt air traffic.",
          "Chess openings such as the Sicilian defence shape the whole middle game.",
          "Honeybees communicate the location of flowers through a waggle dance.",
          "Marathon runners replenish electrolytes during long summer races.",
          "Submarines use ballast tanks to control their depth under the ocean.",
          "Medieval castles were protected by moats, drawbridges and thick walls."]


def topic_index(uri, commit, keep=range(len(TOPICS))):
    passages = [rag.Passage(f"d{i}:0", f"d{i}", TOPICS[i]) for i in keep]
    return rag.build_index(passages, uri, commit, passages_total=len(passages), documents=len(passages),
                           passage_words=40)


def recall_on(probe_path, size=20, rebuild=False, k=3):
    return lambda t: health.probe_recall(t, health.probe_set(probe_path, t, size, rebuild=rebuild), k)


def test_vector_db_recall_on_a_fixed_probe_set(tmp_path):
    vector, probes = tmp_path / "vector", tmp_path / "monitoring" / "probes.json"
    topic_index(vector, "commit-a")
    first = health.vector_db_health(vector, rag.TABLE, "commit-a", recall=recall_on(probes), min_recall=0.7)
    numbers = json.loads(first["numbers"])
    stored = json.loads(probes.read_text())
    assert stored["data_commit"] == "commit-a" and len(stored["probes"]) == len(TOPICS)
    assert {p["passage_id"] for p in stored["probes"]} == {f"d{i}:0" for i in range(len(TOPICS))}
    assert all(p["query"].startswith("Fill in the blank: ") for p in stored["probes"])
    assert first["healthy"] and numbers["recall"] >= 0.9 and numbers["recall_at_3"] == numbers["recall"]
    assert 0 < numbers["mrr"] <= 1 and numbers["probes_missing"] == 0 and numbers["probe_set_commit"] == "commit-a"
    assert "recall@3" in first["detail"]

    # the index is rebuilt without 6 of the 10 passages: the stored probes are reused unchanged, the 6 are misses
    before = probes.read_text()
    topic_index(vector, "commit-b", keep=range(4))
    later = health.vector_db_health(vector, rag.TABLE, "commit-b", recall=recall_on(probes, size=3), min_recall=0.7)
    numbers = json.loads(later["numbers"])
    assert probes.read_text() == before and numbers["probe_set_commit"] == "commit-a"
    assert numbers["probes"] == 10 and numbers["probes_missing"] == 6 and numbers["recall"] <= 0.4
    assert not later["healthy"] and "below 0.7 (6 probe passages gone from the index)" in later["detail"]

    # rebuilding the probe set draws it from the current index
    rebuilt = health.vector_db_health(vector, rag.TABLE, "commit-b", recall=recall_on(probes, rebuild=True),
                                      min_recall=0.7)
    assert rebuilt["healthy"] and json.loads(probes.read_text())["data_commit"] == "commit-b"
    assert json.loads(rebuilt["numbers"])["probes"] == 4


def test_vector_db_recall_probe_faults_are_red_rows(tmp_path):
    vector, probes = tmp_path / "vector", tmp_path / "probes.json"
    topic_index(vector, "commit-a")
    probes.write_text("{not json")
    broken = health.vector_db_health(vector, rag.TABLE, "commit-a", recall=recall_on(probes), min_recall=0.5)
    assert not broken["healthy"] and f"recall probe failed: ValueError: probe set {probes} is unreadable" \
        in broken["detail"]
    called = []
    gone = health.vector_db_health(tmp_path / "nowhere", rag.TABLE, "commit-a",
                                   recall=lambda t: called.append(t) or {}, min_recall=0.5)
    assert not gone["healthy"] and "unreachable" in gone["detail"] and called == []


def test_infra_health_freezes_the_probe_set_and_low_recall_triggers_a_reindex(home, llmops_resources):
    topic_index(home / "vector", "commit-a")
    reindex = make_reindex_sensor(cooldown_s=0)

    def run(instance, **config):
        return dg.materialize([infra_health], instance=instance, resources=llmops_resources, run_config={
            "ops": {"infra_health": {"config": {"probe_vector_query": False, "recall_k": 3, **config}}}})

    with dg.instance_for_test() as instance:
        first = run(instance)
        meta = first.asset_materializations_for_node("infra_health")[0].metadata
        probes = home / "monitoring" / "vector_db_probes.json"
        frozen = probes.read_text()
        assert meta["vector_db_probe_set"].value == str(probes) and json.loads(frozen)["data_commit"] == "commit-a"
        assert meta["vector_db_healthy"].value and meta["vector_db_recall"].value >= 0.9
        assert meta["vector_db"].value["probes"] == len(TOPICS) and 0 < meta["vector_db_mrr"].value <= 1
        assert "recall@3" in meta["vector_db_detail"].value
        assert reindex(dg.build_sensor_context(instance=instance)).run_requests == []

        # a threshold the index cannot meet: the check fails and the re-index sensor acts, on the same probes
        strict = run(instance, min_recall=1.01, probe_set_size=2)
        (check,) = [e for e in strict.get_asset_check_evaluations() if e.check_name == "vector_db_healthy"]
        assert not check.passed and "below 1.01" in check.metadata["unhealthy"].value
        assert probes.read_text() == frozen
        (request,) = reindex(dg.build_sensor_context(instance=instance)).run_requests
        assert "vector DB unhealthy: recall@3" in request.tags["llmops/reason"]


def test_vector_db_recall_drop_from_its_baseline_is_unhealthy(tmp_path):
    vector, probes = tmp_path / "vector", tmp_path / "monitoring" / "probes.json"
    topic_index(vector, "commit-a")
    fixed = lambda t: health.fixed_probe_recall(probes, t, 20, k=3)  # noqa: E731
    first = health.vector_db_health(vector, rag.TABLE, "commit-a", recall=fixed, max_recall_drop=0.2)
    baseline = json.loads(probes.read_text())["baseline_recall"]["3"]
    assert first["healthy"] and baseline == json.loads(first["numbers"])["recall"] >= 0.9
    same = health.vector_db_health(vector, rag.TABLE, "commit-a", recall=fixed, max_recall_drop=0.2)
    assert same["healthy"] and json.loads(same["numbers"])["baseline_recall"] == baseline

    topic_index(vector, "commit-b", keep=range(4))  # 6 of the 10 probe passages gone
    dropped = health.vector_db_health(vector, rag.TABLE, "commit-b", recall=fixed, max_recall_drop=0.2)
    assert not dropped["healthy"] and f"fell more than 0.2 below its baseline {baseline:.3f}" in dropped["detail"]
    assert json.loads(probes.read_text())["baseline_recall"] == {"3": baseline}  # the yardstick stays
