"""The executor is a setting: Kubernetes pods per step, one process, or Dagster's default."""

import dagster as dg
import pytest

from jobs import executor_from_env
from llm_assets.definitions import all_asset_checks, all_assets
from resources import build_resources


def test_k8s_executor_puts_steps_in_pods_and_the_definitions_load_with_it(tmp_path):
    from dagster_k8s import k8s_job_executor

    executor = executor_from_env({"LLMOPS_EXECUTOR": "k8s"})
    assert executor is k8s_job_executor and "per_step_k8s_config" in executor.config_schema.as_field().config_type.fields
    defs = dg.Definitions(assets=all_assets, asset_checks=all_asset_checks, executor=executor,
                          resources=build_resources({"LLMOPS_HOME": str(tmp_path)}))
    assert defs.resolve_implicit_global_asset_job_def().executor_def is k8s_job_executor


def test_in_process_and_default_and_a_bad_value():
    assert executor_from_env({"LLMOPS_EXECUTOR": "in_process"}) is dg.in_process_executor
    assert executor_from_env({}) is None
    with pytest.raises(ValueError, match="LLMOPS_EXECUTOR must be"):
        executor_from_env({"LLMOPS_EXECUTOR": "ray"})
