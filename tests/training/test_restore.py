"""Continuous evaluation follows the promoted version: the schedule names it, and exported_model restores it
from the MLflow registry (its export on disk, or the registry's artifact) instead of exporting a checkpoint."""

import shutil

import dagster as dg
import pytest

from jobs import continuous_evaluation_schedule
from llm_assets.artifacts import TrainedCheckpoint
from llm_assets.training.assets import ExportConfig, exported_model
from resources.settings import SettingsResource
from resources.tracking import TrackingResource
from tests.tiny_model import build_tiny_model

MODEL = "restore-gpt"


@pytest.fixture
def tracking(home):
    return TrackingResource(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", artifact_root=str(home / "mlruns"))


def register(home, tracking: TrackingResource, n: int) -> str:
    model_dir = build_tiny_model(home / "models" / MODEL / f"v{n}", train_steps=0, seed=n)
    run_id = tracking.start_run(f"restore-{n}", {"data_commit": f"commit-{n}"})
    assert tracking.register_model(MODEL, str(model_dir), run_id) == str(n)
    return run_id


# The newest training run's checkpoint: what exported_model would export without restore_version.
NEWEST = TrainedCheckpoint(checkpoint_dir="/nonexistent", model_dir="/nonexistent", mlflow_run_id="newest",
                           data_commit="commit-3", steps=1, final_loss=9.9)


def restore(home, tracking, version: str) -> dg.Output:
    return exported_model(dg.build_asset_context(), config=ExportConfig(registered_name=MODEL, restore_version=version),
                          trained_checkpoint=NEWEST, settings=SettingsResource(home=str(home)), tracking=tracking)


def test_schedule_evaluates_the_promoted_version_restored_from_the_registry(home, tracking):
    runs = {n: register(home, tracking, n) for n in (1, 2)}
    tracking.promote(MODEL, "1")  # v2 was a canary that lost: the newest export is not the promoted one
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(instance=instance, resources={"tracking": tracking})
        assert "no model was exported yet" in continuous_evaluation_schedule(context).skip_message
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "exported_model", metadata={"registered_name": MODEL, "version": "2"}))
        request = continuous_evaluation_schedule(context)
    config = request.run_config["ops"]["exported_model"]["config"]
    assert config == {"registered_name": MODEL, "restore_version": "1"}
    assert request.tags["llmops/model_version"] == "1"

    restored = restore(home, tracking, "1")
    assert restored.value.version == "1" and restored.value.path == str(home / "models" / MODEL / "v1")
    assert restored.value.mlflow_run_id == runs[1] and restored.value.data_commit == "commit-1"
    assert restored.metadata["restored"].value is True

    shutil.rmtree(home / "models" / MODEL / "v1")  # the export is gone: the registry's artifact serves
    from_registry = restore(home, tracking, "1")
    assert "mlruns" in from_registry.value.path and (from_registry.value.path and from_registry.value.version == "1")


def test_schedule_skips_before_any_promotion(home, tracking):
    register(home, tracking, 1)
    with dg.instance_for_test() as instance:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            "exported_model", metadata={"registered_name": MODEL, "version": "1"}))
        skipped = continuous_evaluation_schedule(dg.build_schedule_context(instance=instance,
                                                                          resources={"tracking": tracking}))
    assert f"no version of {MODEL} is promoted yet" in skipped.skip_message
