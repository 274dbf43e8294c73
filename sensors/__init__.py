"""Sensors: monitoring signals that re-materialize what is stale, and rollouts that judge themselves."""

from sensors.endpoint import endpoint_health_sensor, live_regression_sensor
from sensors.monitoring import feedback_dataset_sensor, monitoring_retrain_sensor, vector_db_health_sensor
from sensors.raw_source import raw_source_sensor
from sensors.rollout import canary_sensor, data_commit_sensor, prompt_change_sensor

all_sensors = [live_regression_sensor, endpoint_health_sensor, raw_source_sensor, monitoring_retrain_sensor,
               feedback_dataset_sensor, vector_db_health_sensor, canary_sensor, prompt_change_sensor,
               data_commit_sensor]
