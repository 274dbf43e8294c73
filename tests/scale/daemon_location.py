"""A tiny code location for the dagster-daemon test: one asset, and a sensor that requests one run per file.

The sensor looks for `request-<n>` files in $LLMOPS_TEST_REQUESTS; each new file is one RunRequest with
`run_key` = the file name, so a request is launched once however often the sensor ticks.
"""

import os
from pathlib import Path

import dagster as dg


@dg.asset
def heartbeat(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Writes which request it ran for: the test reads it back."""
    key = context.run.tags.get("dagster/run_key", "manual")
    out = Path(os.environ["LLMOPS_TEST_REQUESTS"]) / f"done-{key}"
    out.write_text(context.run_id)
    return dg.MaterializeResult(metadata={"request": key})


heartbeat_job = dg.define_asset_job("heartbeat_job", selection=[heartbeat])


@dg.sensor(job=heartbeat_job, minimum_interval_seconds=1, default_status=dg.DefaultSensorStatus.RUNNING)
def request_sensor(context: dg.SensorEvaluationContext):
    requests = sorted(p.name for p in Path(os.environ["LLMOPS_TEST_REQUESTS"]).glob("request-*"))
    new = [r for r in requests if r > (context.cursor or "")]
    if not new:
        return dg.SkipReason("no new request file")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=r) for r in new], cursor=new[-1])


defs = dg.Definitions(assets=[heartbeat], jobs=[heartbeat_job], sensors=[request_sensor])
