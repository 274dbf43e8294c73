"""The single Definitions object: every lifecycle stage, its checks, jobs, schedules, sensors and resources."""

import dagster as dg

from jobs import all_jobs, all_schedules, executor_from_env
from llm_assets.data import assets as data_assets
from llm_assets.data import checks as data_checks
from llm_assets.deployment import assets as deployment_assets
from llm_assets.evaluation import assets as evaluation_assets
from llm_assets.monitoring import assets as monitoring_assets
from llm_assets.optimization import assets as optimization_assets
from llm_assets.tokens import assets as tokens_assets
from llm_assets.training import assets as training_assets
from resources import build_resources
from sensors import all_sensors

_STAGES = [data_assets, data_checks, tokens_assets, training_assets, evaluation_assets, optimization_assets,
           deployment_assets, monitoring_assets]

all_assets = dg.load_assets_from_modules(_STAGES)
all_asset_checks = dg.load_asset_checks_from_modules(_STAGES)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_asset_checks,
    jobs=all_jobs,
    schedules=all_schedules,
    sensors=all_sensors,
    resources=build_resources(),
    executor=executor_from_env(),
)
