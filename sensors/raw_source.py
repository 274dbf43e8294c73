"""Sensor on the raw text source: new or changed files since the last ingest request re-curation."""

from __future__ import annotations

import glob
import os

import dagster as dg

from jobs import curation_job
from llm_assets.data.ingest import default_source_files
from resources.settings import SettingsResource

RAW_DOCUMENTS = dg.AssetKey("raw_documents")


def source_files(source: str) -> list[str]:
    """The local files a source names: the default package docs, a glob, a directory tree or one file."""
    if not source:
        return default_source_files()
    path = source.removeprefix("file://")
    if any(c in path for c in "*?["):
        return sorted(glob.glob(path, recursive=True))
    if os.path.isdir(path):
        return sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
    return [path] if os.path.exists(path) else []


def files_changed_since(files: list[str], since: float) -> list[tuple[float, str]]:
    """(mtime, path) of the files modified after `since`, oldest first."""
    return sorted((m, f) for f in files if (m := os.path.getmtime(f)) > since)


@dg.sensor(job=curation_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def raw_source_sensor(context: dg.SensorEvaluationContext, settings: SettingsResource):
    """Requests re-curation when the raw source has files newer than the last `raw_documents` ingest."""
    last = context.instance.get_latest_materialization_event(RAW_DOCUMENTS)
    if last is None:
        return dg.SkipReason("raw_documents was never materialized; materialize it first")
    since = max(last.timestamp, float(context.cursor or 0))
    changed = files_changed_since(source_files(settings.source), since)
    if not changed:
        return dg.SkipReason(f"no files in the raw source changed since {since:.0f}")
    newest = changed[-1][0]
    names = ", ".join(os.path.basename(f) for _, f in changed[:3])
    reason = f"{len(changed)} new or changed source files ({names}{', ...' if len(changed) > 3 else ''})"
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=f"curate-{newest:.6f}",
                                    tags={"llmops/sensor": "raw_source_sensor", "llmops/reason": reason})],
        cursor=str(newest),
    )
