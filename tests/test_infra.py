"""infra/ holds what users run outside this machine (compose stack, Prometheus, Grafana, Helm): no Docker engine,
Prometheus or helm binary here, so these tests check the files' facts: they parse, reference files and services
that exist, keep secrets in the environment, and query only the metric names the gateway exports."""

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from llm_assets.deployment.gateway import RouteTable

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
CHART = INFRA / "helm" / "llmops-serving"
GATEWAY_SOURCE = ROOT / "llm_assets" / "deployment" / "gateway.py"

# ---- helpers


def _data_files(*suffixes: str) -> list[Path]:
    """YAML/JSON files under infra/, except Helm templates (Go templates, not YAML until rendered)."""
    return sorted(p for p in INFRA.rglob("*") if p.suffix in suffixes and "templates" not in p.parts)


def _compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def gateway_metrics(source: Path = GATEWAY_SOURCE) -> dict[str, set[str]]:
    """{series name: label names} for every Prometheus metric the gateway's source declares (parsed with ast,
    so a renamed metric or label there changes this)."""
    suffixes = {"Counter": ["_total"], "CounterMetricFamily": ["_total"], "Gauge": [""], "GaugeMetricFamily": [""],
                "Histogram": ["_bucket", "_sum", "_count"], "HistogramMetricFamily": ["_bucket", "_sum", "_count"],
                "Summary": ["", "_sum", "_count"]}
    series: dict[str, set[str]] = {}
    for node in ast.walk(ast.parse(source.read_text())):
        if not isinstance(node, ast.Call):
            continue
        kind = getattr(node.func, "id", None) or getattr(node.func, "attr", None)
        if kind not in suffixes or not node.args or not isinstance(node.args[0], ast.Constant):
            continue
        name = node.args[0].value.removesuffix("_total") if "Counter" in kind else node.args[0].value
        labels_node = next((k.value for k in node.keywords if k.arg in ("labels", "labelnames")),
                           node.args[2] if len(node.args) > 2 else None)
        labels = {e.value for e in labels_node.elts} if isinstance(labels_node, (ast.List, ast.Tuple)) else set()
        for suffix in suffixes[kind]:
            series[name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
                "offset", "inf", "nan"}


def promql_selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names matched) for each series selector in a PromQL expression."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)          # string literals
    expr = re.sub(r"\$\w+", "1", expr)                        # dashboard variables
    out = []
    for m in re.finditer(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}", expr):
        if m.group(1) and m.group(1) not in PROMQL_WORDS:
            out.append((m.group(1), set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", m.group(2)))))
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", bare):
        if m.group(1).lower() not in PROMQL_WORDS and not any(m.group(1) == s for s, _ in out):
            out.append((m.group(1), set()))
    return out


def promql_grouping(expr: str) -> set[str]:
    return {label.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
            for label in group.split(",") if label.strip()}


def check_promql(expr: str, metrics: dict[str, set[str]], extra: frozenset = frozenset({"up"})) -> list[str]:
    """Problems with one expression: unknown metric names, labels a metric does not have."""
    problems, labels_seen = [], set()
    for name, labels in promql_selectors(expr):
        if name in extra:
            continue
        if name not in metrics:
            problems.append(f"{name!r} is not a metric the gateway exports")
            continue
        labels_seen |= metrics[name]
        if labels - metrics[name] - {"__name__"}:
            problems.append(f"{name!r} has no label(s) {sorted(labels - metrics[name])}")
    unknown = promql_grouping(expr) - labels_seen - {"instance", "job"}
    if unknown and labels_seen:
        problems.append(f"groups by label(s) {sorted(unknown)} that none of its metrics has")
    return problems


def settings_names() -> set[str]:
    """The environment variables llmops reads (resources/__init__.py, the settings' one place)."""
    return set(re.findall(r'(?:env\.get|EnvVar)\("([A-Z0-9_]+)"', (ROOT / "resources" / "__init__.py").read_text()))


# ---- parsing


@pytest.mark.parametrize("path", _data_files(".yml", ".yaml"), ids=lambda p: str(p.relative_to(INFRA)))
def test_yaml_files_parse(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} is empty"


@pytest.mark.parametrize("path", _data_files(".json"), ids=lambda p: str(p.relative_to(INFRA)))
def test_json_files_parse(path):
    assert json.loads(path.read_text())


def test_promql_checker_catches_unknown_metrics_labels_and_groupings():
    metrics = {"gateway_requests_total": {"model", "version", "status"},
               "gateway_request_latency_seconds_bucket": {"model", "version", "le"}}
    ok = ('histogram_quantile(0.95, sum by (le, version) (rate(gateway_request_latency_seconds_bucket'
          '{model=~"$model"}[5m]))) / sum(rate(gateway_requests_total{status=~"5.."}[5m]))')
    assert check_promql(ok, metrics) == []
    assert "'gateway_request_total' is not a metric" in check_promql("rate(gateway_request_total[5m])", metrics)[0]
    assert "no label(s) ['replica']" in check_promql('gateway_requests_total{replica="x"}', metrics)[0]
    assert "groups by label(s) ['replica']" in check_promql("sum by (replica) (gateway_requests_total)", metrics)[0]


def test_gateway_declares_the_metrics_the_infra_relies_on():
    metrics = gateway_metrics()
    for name in ("gateway_requests_total", "gateway_request_latency_seconds_bucket",
                 "gateway_time_to_first_token_seconds_bucket", "gateway_generated_tokens_total",
                 "gateway_prompt_tokens_total", "gateway_outstanding_requests", "gateway_replica_up"):
        assert name in metrics, f"{name} is no longer declared in {GATEWAY_SOURCE}"
    assert {"model", "version"} <= metrics["gateway_requests_total"]


# ---- docker compose


def test_compose_has_the_full_stack():
    services = set(_compose()["services"])
    assert {"postgres", "minio", "lakefs", "mlflow", "dagster-webserver", "dagster-daemon", "gateway",
            "prometheus", "grafana"} <= services
    assert len([s for s in services if s.startswith("model-server")]) >= 2


def test_compose_references_existing_files_and_services():
    compose = _compose()
    services = compose["services"]
    for name, svc in services.items():
        build = svc.get("build")
        if isinstance(build, dict) and "${" not in build["context"]:
            context = (INFRA / build["context"]).resolve()
            assert context.is_dir(), f"{name}: build context {context} does not exist"
            assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: no Dockerfile"
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (INFRA / source).exists(), f"{name}: bind-mount source {source} does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"
        for dep in svc.get("depends_on", []):
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_compose_model_servers_build_a_serving_image_context():
    """The model servers' context is a serving_image output (given by variable); the templates it is generated
    from are in infra/serving/."""
    for name, svc in _compose()["services"].items():
        if name.startswith("model-server"):
            assert svc["build"]["context"].startswith("${LLMOPS_SERVING_CONTEXT:?")
    for template in ("Dockerfile.tmpl", "entrypoint.sh.tmpl", "healthcheck.py"):
        assert (INFRA / "serving" / template).is_file()


def test_compose_binds_ports_to_loopback_and_takes_secrets_from_the_environment():
    text = re.sub(r"(?m)^\s*#.*$", "", (INFRA / "docker-compose.yml").read_text())
    compose = _compose()
    for name, svc in compose["services"].items():
        for port in svc.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond 127.0.0.1"
        env = svc.get("environment", {})
        for key, value in (env.items() if isinstance(env, dict) else []):
            if re.search(r"PASSWORD|SECRET|_KEY$", key):
                assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*|:-)\}", str(value)), \
                    f"{name}.{key} must come from the environment, got {value!r}"
    # Credentials inside URLs are variables too.
    passwords = re.findall(r"://[^/\s:@]+:(\$\{[^}]*\}|[^@\s]+)@", text)
    assert len(passwords) >= 2  # lakeFS's and MLflow's Postgres URLs
    for user_pass in passwords:
        assert user_pass.startswith("${"), f"a URL in docker-compose.yml embeds a literal password {user_pass!r}"
    required = set(re.findall(r"\$\{([A-Z0-9_]+):\?", text))
    example = set(re.findall(r"^([A-Z0-9_]+)=", (INFRA / ".env.example").read_text(), re.M))
    assert required <= example, f"required variables missing from infra/.env.example: {sorted(required - example)}"


def test_compose_settings_are_ones_llmops_reads():
    env = _compose()["x-llmops-env"]
    ours = {k for k in env if k.startswith(("LLMOPS_", "SPARK_", "MLFLOW_", "LAKEFS_"))}
    assert ours - settings_names() == set(), f"compose sets variables llmops never reads: {ours - settings_names()}"
    # The dagster.yaml it mounts reads its Postgres settings from variables the services set.
    dagster_yaml = (INFRA / "dagster" / "dagster.yaml").read_text()
    assert "postgres" in yaml.safe_load(dagster_yaml)["storage"]
    assert set(re.findall(r"env: (DAGSTER_PG_\w+)", dagster_yaml)) <= set(env)


def test_compose_gateway_route_table_is_valid_and_points_at_model_servers():
    services = _compose()["services"]
    routes = json.loads((INFRA / "gateway" / "routes.json").read_text())
    table = RouteTable.parse(routes)
    urls = [r.url for _, _, r in table.replicas()]
    assert urls
    for url in urls:
        host, port = re.fullmatch(r"http://([\w-]+):(\d+)", url).groups()
        assert host in services and host.startswith("model-server"), url
        assert port == "8000"  # LLMOPS_PORT in the serving image's Dockerfile
    assert 'LLMOPS_PORT=8000' in (INFRA / "serving" / "Dockerfile.tmpl").read_text()


# ---- Prometheus and Grafana


def test_prometheus_scrapes_the_gateway_and_the_model_servers_by_service_name():
    services = _compose()["services"]
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
               for job in config["scrape_configs"]}
    assert targets["gateway"] == ["gateway:8000"]
    model_servers = {s for s in services if s.startswith("model-server")}
    assert {t.split(":")[0] for t in targets["model-servers"]} == model_servers
    for job, hosts in targets.items():
        for target in hosts:
            assert target.split(":")[0] in services, f"job {job}: {target} is not a compose service"
    mount = services["prometheus"]["volumes"][0]
    assert mount.startswith("./prometheus/prometheus.yml:")


def _dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted((INFRA / "grafana" / "dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            out += [(f"{path.name}: {panel['title']}", t["expr"]) for t in panel.get("targets", [])]
        for var in dash.get("templating", {}).get("list", []):
            if var.get("type") == "query":
                q = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                out.append((f"{path.name}: variable {var['name']}", re.sub(r"^label_values\((.*),\s*\w+\)$", r"\1", q)))
    return out


def test_grafana_dashboard_queries_only_metrics_the_gateway_exports():
    metrics = gateway_metrics()
    exprs = _dashboard_exprs()
    assert len(exprs) >= 10
    problems = [f"{where}: {p}" for where, expr in exprs for p in check_promql(expr, metrics)]
    assert problems == []


def test_grafana_dashboard_covers_the_serving_signals():
    exprs = " ".join(e for _, e in _dashboard_exprs())
    for needle in ("gateway_requests_total", 'status=~"5..', "histogram_quantile(0.5,", "histogram_quantile(0.95,",
                   "histogram_quantile(0.99,", "gateway_time_to_first_token_seconds_bucket",
                   "gateway_generated_tokens_total", "gateway_outstanding_requests", "gateway_replica_up",
                   "$price_per_1k_tokens"):
        assert needle in exprs, needle


def test_grafana_provisioning_matches_the_dashboard_and_compose():
    services = _compose()["services"]
    datasource = yaml.safe_load((INFRA / "grafana/provisioning/datasources/prometheus.yml").read_text())
    ds = datasource["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in services
    provider = yaml.safe_load((INFRA / "grafana/provisioning/dashboards/llmops.yml").read_text())["providers"][0]
    mounts = dict(v.split(":")[:2] for v in services["grafana"]["volumes"] if v.startswith("."))
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    dash = json.loads((INFRA / "grafana/dashboards/llmops-serving.json").read_text())
    uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert uids == {ds["uid"]}


# ---- Helm


def _values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def _templates() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((CHART / "templates").iterdir())}


def _lookup(values: object, path: list[str], where: str) -> list[object]:
    """The value(s) at `path`; a list along the way is searched in every item. Raises KeyError naming the miss."""
    nodes = [values]
    for i, key in enumerate(path):
        nxt = []
        for node in nodes:
            for item in (node if isinstance(node, list) else [node]):
                if not isinstance(item, dict) or key not in item:
                    raise KeyError(f"{where}: .Values.{'.'.join(path[:i + 1])} is not in values.yaml")
                nxt.append(item[key])
        nodes = nxt
    return nodes


def helm_value_references(text: str) -> list[list[str]]:
    """Every values path a template reads: `.Values.a.b`, `$.Values.a.b`, and `$x.c` where `$x := .Values.a`
    (or `range $x := .Values.a`, whose items then need `c`)."""
    aliases = {m.group(1): m.group(2).split(".")[1:]
               for m in re.finditer(r"(\$\w+)\s*:=\s*\$?\.Values((?:\.\w+)+)", text)}
    refs = [m.group(1).split(".")[1:] for m in re.finditer(r"\$?\.Values((?:\.\w+)+)", text)]
    for m in re.finditer(r"(\$\w+)((?:\.\w+)+)", text):
        if m.group(1) in aliases:
            refs.append(aliases[m.group(1)] + m.group(2).split(".")[1:])
    return refs


def test_helm_templates_read_only_values_that_exist():
    values, refs = _values(), 0
    for name, text in _templates().items():
        for path in helm_value_references(text):
            _lookup(values, path, name)
            refs += 1
    assert refs > 30


def test_helm_value_reference_check_catches_a_typo():
    with pytest.raises(KeyError, match=r"\.Values\.autoscaling\.keda\.enabeld"):
        for path in helm_value_references("{{ if .Values.autoscaling.keda.enabeld }}"):
            _lookup(_values(), path, "t")
    with pytest.raises(KeyError, match=r"\.Values\.versions\.weigth"):
        for path in helm_value_references("{{ range $v := .Values.versions }}{{ $v.weigth }}{{ end }}"):
            _lookup(_values(), path, "t")


def test_helm_templates_are_balanced_and_include_defined_helpers():
    templates = _templates()
    defined = set(re.findall(r'define\s+"([^"]+)"', "".join(templates.values())))
    for name, text in templates.items():
        opens = len(re.findall(r"\{\{-?\s*(?:if|range|with|define|block)\b", text))
        ends = len(re.findall(r"\{\{-?\s*end\b", text))
        assert opens == ends, f"{name}: {opens} blocks opened, {ends} closed"
        for used in re.findall(r'(?:include|template)\s+"([^"]+)"', text):
            assert used in defined, f"{name} includes undefined {used!r}"


def render_by_substitution(text: str) -> list[dict]:
    """A crude render: control lines dropped, a line that is only an indented include/toYaml becomes a
    placeholder key, other actions become `X`; then the YAML documents must parse."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if re.fullmatch(r"\{\{-?\s*(?:if|else|range|with|end|define|\$\w+\s*:?=|/\*|-?\s*/\*)[^}]*\}\}", stripped) \
                or re.fullmatch(r"\{\{-?\s*/\*.*\*/\s*-?\}\}", stripped):
            continue
        if re.fullmatch(r"\{\{-?.*\|\s*nindent\s+\d+\s*\}\}", stripped):
            lines.append(" " * (len(line) - len(line.lstrip())) + "rendered_block: X")
            continue
        lines.append(re.sub(r"\{\{.*?\}\}", "X", line))
    return [d for d in yaml.safe_load_all("\n".join(lines)) if d]


def test_helm_templates_render_by_substitution_into_kubernetes_objects():
    kinds = []
    for name, text in _templates().items():
        if name.startswith("_"):
            continue
        for doc in render_by_substitution(text):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{name}: {doc}"
            kinds.append(doc["kind"])
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "ScaledObject"} <= set(kinds)


def test_helm_autoscaling_queries_use_gateway_metrics():
    metrics = gateway_metrics()
    text = _templates()["autoscaling.yaml"]
    queries = [q for q in re.findall(r'printf "([^"]*(?:\\"[^"]*)*)"', text) if "gateway_" in q]
    assert len(queries) >= 2
    for query in queries:
        assert check_promql(query.replace("%s", 'model="m",version="1"'), metrics) == []


def test_helm_chart_and_values_basics():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "llmops-serving" and chart["version"]
    values = _values()
    assert values["podSecurityContext"]["runAsNonRoot"] is True
    assert values["autoscaling"]["hpa"]["enabled"] and not values["autoscaling"]["keda"]["enabled"]
    assert all({"version", "weight", "replicas"} <= set(v) for v in values["versions"])


def test_dagster_helm_values_configure_k8s_runs_postgres_and_our_settings():
    values = yaml.safe_load((INFRA / "helm" / "dagster-values.yaml").read_text())
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert values["postgresql"]["enabled"] is False and values["postgresql"]["postgresqlHost"]
    assert values["global"]["postgresqlSecretName"] and values["generatePostgresqlPasswordSecret"] is False
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "llm_assets.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert {"LLMOPS_HOME", "SPARK_MASTER", "MLFLOW_TRACKING_URI"} <= set(env)
    assert env["LLMOPS_HOME"].startswith("s3://")
    ours = {k for k in env if k.startswith(("LLMOPS_", "SPARK_", "MLFLOW_", "LAKEFS_"))}
    assert ours - settings_names() == set(), f"values set variables llmops never reads: {ours - settings_names()}"
