"""Sensors: monitoring signals that re-materialize what is stale."""

from sensors.endpoint import endpoint_drift_sensor, endpoint_health_sensor

all_sensors = [endpoint_drift_sensor, endpoint_health_sensor]
