"""Sensors: monitoring signals that re-materialize what is stale."""

from sensors.endpoint import endpoint_drift_sensor, endpoint_health_sensor
from sensors.raw_source import raw_source_sensor

all_sensors = [endpoint_drift_sensor, endpoint_health_sensor, raw_source_sensor]
