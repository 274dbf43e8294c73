"""The raw-source sensor on a real source directory and a real instance's materialization history."""

from __future__ import annotations

import os

import dagster as dg
import pytest

from resources.settings import SettingsResource
from sensors.raw_source import raw_source_sensor


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def evaluate(instance, source, cursor=None):
    settings = SettingsResource(home=str(source.parent / "home"), source=str(source))
    return raw_source_sensor(dg.build_sensor_context(instance=instance, cursor=cursor,
                                                     resources={"settings": settings}))


def ingested(instance):
    """Record a raw_documents materialization; returns its timestamp."""
    instance.report_runless_asset_event(dg.AssetMaterialization("raw_documents"))
    return instance.get_latest_materialization_event(dg.AssetKey("raw_documents")).timestamp


def test_quiet_before_the_first_ingest(instance, tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.md").write_text("a document")
    result = evaluate(instance, tmp_path / "src")
    assert isinstance(result, dg.SkipReason) and "never materialized" in result.skip_message


def test_quiet_when_nothing_changed_after_ingest(instance, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("a document")
    stamp = ingested(instance)
    os.utime(src / "a.md", (stamp - 60, stamp - 60))
    assert isinstance(evaluate(instance, src), dg.SkipReason)


def test_new_file_requests_curation_once(instance, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.md").write_text("a document")
    stamp = ingested(instance)
    os.utime(src / "a.md", (stamp - 60, stamp - 60))
    (src / "b.md").write_text("a new document")
    os.utime(src / "b.md", (stamp + 5, stamp + 5))
    result = evaluate(instance, src)
    (request,) = result.run_requests
    assert request.tags["llmops/reason"] == "1 new or changed source files (b.md)"
    again = evaluate(instance, src, cursor=result.cursor)
    assert isinstance(again, dg.SkipReason)
