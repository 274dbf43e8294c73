"""`make loop-demo`: the feedback loop on a deployed demo model, driven by a real `dagster-daemon`.

    make demo && make loop-demo

1. starts `dagster-daemon` on the demo's Dagster home with the retrain and canary sensors on;
2. sends users' traffic to the endpoint (questions about the docs, good feedback) and measures it
   (`endpoint_metrics`, `drift_report`, `output_quality`): the reference window;
3. shifts the traffic (another topic and language) with bad feedback and measures again: drift;
4. the daemon's `monitoring_retrain_sensor` sees the drift and starts `retrain` (train on the newest shards,
   evaluate, gate, deploy the new version as a canary); the trigger-to-run delay is printed;
5. more traffic reaches the canary, `canary_sensor` has `canary_analysis` judge it: promoted or rolled back.

Each run carries its reason in its tags (`llmops/sensor`, `llmops/reason`, the numbers), so the UI shows
the chain from the drift to the canary's verdict. `LLMOPS_HOME` / `DAGSTER_HOME` as for `make demo`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import httpx

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SENSORS = ("monitoring_retrain_sensor", "canary_sensor")
NORMAL = ("What does the license of this package allow?", "How do I install the documentation tools?",
          "Which Python versions does the package support?", "Where is the changelog of the project?",
          "How do I report a bug in the software?", "What is the default configuration file?")
SHIFTED = ("Wie koche ich eine Kartoffelsuppe mit Lauch?", "Quel vin servir avec un plateau de fromages?",
           "Welche Gewürze passen zu gebratenem Kürbis?", "Comment réussir une pâte feuilletée maison?",
           "Wie lange muss ein Sauerteigbrot gehen?", "Quelle est la recette du boeuf bourguignon?")
MONITORING = {"drift_report": {"config": {"window": 24, "min_rows": 16}},
              "output_quality": {"config": {"sample_fraction": 1.0}}}


def start_daemon(env: dict[str, str], log: Path) -> subprocess.Popen:
    """`dagster sensor start` for SENSORS, then `dagster-daemon run` on the workspace, in its own session."""
    bin_dir = Path(sys.executable).parent
    for sensor in SENSORS:
        subprocess.run([str(bin_dir / "dagster"), "sensor", "start", sensor, "-w", "workspace.yaml"],
                       cwd=PROJECT_ROOT, env=env, check=True, capture_output=True, timeout=300)
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([str(bin_dir / "dagster-daemon"), "run", "-w", "workspace.yaml"], cwd=PROJECT_ROOT,
                            env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def stop_daemon(daemon: subprocess.Popen) -> None:
    os.killpg(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait(30)


def send_traffic(url: str, prompts: tuple[str, ...], n: int, thumbs: str | None, user_prefix: str,
                 api_key: str = "", max_tokens: int = 8) -> list[str]:
    """`n` chat requests from `n` users (prompts in turn), each answer given `thumbs` feedback; returns the
    model versions that answered."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def one(i: int) -> str:
        with httpx.Client(timeout=120, headers=headers) as client:
            resp = client.post(f"{url}/v1/chat/completions", json={
                "messages": [{"role": "user", "content": prompts[i % len(prompts)]}], "max_tokens": max_tokens,
                "user": f"{user_prefix}-{i}"})
            resp.raise_for_status()
            if thumbs:
                client.post(f"{url}/v1/feedback", json={"request_id": resp.headers["x-llmops-request-id"],
                                                        "thumbs": thumbs}).raise_for_status()
            return resp.headers.get("x-llmops-model-version", "")

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def measure(instance: dg.DagsterInstance, resources: dict) -> dict:
    """Materialize the monitoring measurements the sensors read; returns drift_report's metadata."""
    from llm_assets.definitions import all_asset_checks, all_assets

    result = dg.materialize([*all_assets, *all_asset_checks], resources=resources, instance=instance,
                            selection=["endpoint_metrics", "drift_report", "output_quality"],
                            run_config={"ops": MONITORING}, tags={"llmops/step": "loop-demo measurement"})
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey("drift_report")]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def wait_for_run(instance: dg.DagsterInstance, job: str, sensor: str, after: float, timeout_s: float,
                 done: bool = True) -> dg.DagsterRun:
    """The first run of `job` requested by `sensor` created after `after` (epoch s); with `done`, once finished."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        runs = [r for r in instance.get_run_records(dg.RunsFilter(job_name=job, tags={"llmops/sensor": sensor}))
                if r.create_timestamp.timestamp() >= after]
        if runs:
            record = min(runs, key=lambda r: r.create_timestamp)
            if not done or record.dagster_run.is_finished:
                return record.dagster_run
        time.sleep(2)
    raise TimeoutError(f"no {'finished ' if done else ''}run of {job} from {sensor} within {timeout_s:.0f}s")


def wait_for_judgement(instance: dg.DagsterInstance, serving, after: float, timeout_s: float) -> dg.DagsterRun:
    """The first canary_sensor run of `canary` created after `after`, once finished; or, when a run from before
    already decided (no canary live and no canary run in flight), the newest finished one."""
    from sensors.rollout import live_arms

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        records = instance.get_run_records(dg.RunsFilter(job_name="canary", tags={"llmops/sensor": "canary_sensor"}))
        newer = [r for r in records if r.create_timestamp.timestamp() >= after]
        if newer:
            first = min(newer, key=lambda r: r.create_timestamp)
            if first.dagster_run.is_finished:
                return first.dagster_run
        elif records and all(r.dagster_run.is_finished for r in records) and not live_arms(serving.current().routes):
            return max(records, key=lambda r: r.create_timestamp).dagster_run
        time.sleep(2)
    raise TimeoutError(f"no canary run from canary_sensor judged the canary within {timeout_s:.0f}s")


def created_at(instance: dg.DagsterInstance, run: dg.DagsterRun) -> float:
    return instance.get_run_record_by_id(run.run_id).create_timestamp.timestamp()


def run_loop(instance: dg.DagsterInstance, resources: dict, env: dict[str, str], log_dir: Path,
             say=print, retrain_timeout_s: float = 1800) -> dict:
    """Steps 1-5 of the module docstring; returns what happened, with the measured trigger-to-run delay."""
    serving = resources["serving"]
    deployment = serving.current()
    if deployment is None:
        raise RuntimeError("nothing is deployed: run `make demo` first")
    daemon = start_daemon(env, log_dir / "dagster-daemon.log")
    try:
        say(f"daemon pid {daemon.pid}; sensors {', '.join(SENSORS)} on; endpoint {deployment.url} "
            f"v{deployment.model_version}")
        send_traffic(deployment.url, NORMAL, 32, "up", "docs-user", serving.api_key)
        reference = measure(instance, resources)
        say(f"normal traffic measured: drifted={reference['drifted']} ({reference['status']})")
        send_traffic(deployment.url, SHIFTED, 32, "down", "cook-user", serving.api_key)
        drifted = measure(instance, resources)
        trigger = time.time()
        say(f"shifted traffic measured: drifted={drifted['drifted']}: {drifted['drift_reasons']}")
        if not drifted["drifted"]:
            raise RuntimeError(f"the shifted traffic did not read as drift: {drifted}")
        retrain = wait_for_run(instance, "retrain", "monitoring_retrain_sensor", trigger - 5, 300, done=False)
        trigger_to_run_s = created_at(instance, retrain) - trigger
        say(f"retrain run {retrain.run_id} started {trigger_to_run_s:.1f}s after the drift was measured; "
            f"reason: {retrain.tags['llmops/reason']}")
        retrain = wait_for_run(instance, "retrain", "monitoring_retrain_sensor", trigger - 5, retrain_timeout_s)
        if retrain.status != dg.DagsterRunStatus.SUCCESS:
            raise RuntimeError(f"retrain run {retrain.run_id} ended {retrain.status}; see the UI or "
                               f"{log_dir / 'dagster-daemon.log'}")
        canary = serving.current()
        say(f"retrain finished; serving weights {canary.weights}")
        for round_ in range(1, 6):  # until canary_analysis has enough traffic to decide
            answered = send_traffic(canary.url, NORMAL + SHIFTED, 160, None, f"user-round{round_}", serving.api_key)
            say(f"160 requests, answered by versions {dict(Counter(answered))}")
            judged = wait_for_judgement(instance, serving, time.time() - 1, 600)
            decision = instance.get_latest_materialization_event(dg.AssetKey("canary_analysis"))
            meta = {k: v.value for k, v in decision.asset_materialization.metadata.items()}
            say(f"canary run {judged.run_id} ({judged.status.value}): model {meta['model_decision']}, "
                f"prompt {meta['prompt_decision']}; serving weights {serving.current().weights}")
            if meta["model_decision"] != "wait":
                break
        return {"trigger_to_run_s": trigger_to_run_s, "retrain": retrain, "canary_run": judged,
                "canary": meta, "weights_after_retrain": canary.weights, "drift": drifted}
    finally:
        stop_daemon(daemon)


def main() -> int:
    from resources import build_resources
    from resources.settings import home_from_env

    home = Path(home_from_env())
    env = {**os.environ, "LLMOPS_HOME": str(home), "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", str(home / "dagster")),
           "LLMOPS_CANARY_INTERVAL_S": os.environ.get("LLMOPS_CANARY_INTERVAL_S", "20")}
    os.environ.update(env)
    instance = dg.DagsterInstance.get()
    outcome = run_loop(instance, build_resources(env), env, home / "logs")
    print(f"\nllmops loop demo: drift -> retrain in {outcome['trigger_to_run_s']:.1f}s -> canary "
          f"{outcome['canary']['model_decision']}; open `make ui` → Runs to follow the tags")
    return 0


if __name__ == "__main__":
    sys.exit(main())
