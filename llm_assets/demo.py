"""`make demo`: materialize the whole graph on embedded defaults, then say what was made.

    LLMOPS_HOME=./.llmops python -m llm_assets.demo
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import dagster as dg
from deltalake import DeltaTable

from resources.settings import home_from_env

DEMO_CONFIG = {"endpoint": {"config": {"autoscale_max_replicas": 2}},
               "red_team_report": {"config": {"garak_install": True}}}
"""The demo's settings beyond the defaults: the endpoint scales itself between 1 and 2 replicas, and the red
team installs garak into its own venv under the cache on first use (about 2 GB, a few minutes)."""
TABLES = ["raw_documents", "cleaned_corpus", "deduped_corpus", "curated_corpus", "quarantine",
          "served_requests", "endpoint_metric_windows", "prompt_registry"]


def _value(event, key: str):
    entry = event.asset_materialization.metadata.get(key) if event else None
    return entry.value if entry is not None else None


def summarize(instance: dg.DagsterInstance, home: Path) -> str:
    """What the lifecycle left behind, read back from the Delta tables and the Dagster event log."""
    latest = instance.get_latest_materialization_event
    lines = ["", "llmops demo: done", "", f"home: {home}", "", "Delta tables (rows @ version):"]
    for table in TABLES:
        uri = home / "lakehouse" / table
        if (uri / "_delta_log").exists():
            dt = DeltaTable(str(uri))
            lines.append(f"  {table:<16} {dt.to_pyarrow_dataset().count_rows():>7} rows @ v{dt.version()}  {uri}")
    curated = latest(dg.AssetKey("curated_corpus"))
    exported = latest(dg.AssetKey("exported_model"))
    endpoint = latest(dg.AssetKey("endpoint"))
    url = _value(endpoint, "url")
    lines += [
        "",
        f"data commit:    {_value(curated, 'data_commit')}",
        f"model version:  {_value(exported, 'registered_name')} v{_value(exported, 'version')}"
        f"  ({_value(exported, 'model_dir')})",
        f"endpoint:       {url}",
        "",
        "Try it:",
        f"  curl -s {url}/v1/completions -H 'Content-Type: application/json' \\",
        "    -d '{\"prompt\": \"The license\", \"max_tokens\": 32}'",
        "",
        "Open the UI:     make ui      (http://127.0.0.1:3000, the whole lineage graph)",
        "MLflow:          make mlflow-ui",
        "The loop:        make loop-demo  (drift -> retrain -> canary, with the Dagster daemon)",
        "Stop servers:    make down",
    ]
    return "\n".join(lines)


def main() -> int:
    home = Path(home_from_env())
    os.environ["LLMOPS_HOME"] = str(home)
    os.environ.setdefault("DAGSTER_HOME", str(home / "dagster"))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    from llm_assets.definitions import defs  # after LLMOPS_HOME is fixed: resources read it

    instance = dg.DagsterInstance.get()
    start = time.monotonic()
    result = defs.resolve_job_def("lifecycle").execute_in_process(instance=instance, raise_on_error=False,
                                                                  run_config={"ops": DEMO_CONFIG})
    if not result.success:
        failed = [e.step_key for e in result.all_events if e.is_step_failure]
        print(f"llmops demo: the run failed at {failed}; see `make ui` → Runs, run {result.run_id}",
              file=sys.stderr)
        return 1
    print(summarize(instance, home))
    print(f"\nlifecycle run {result.run_id} took {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
