-- One database per system on the stack's Postgres (runs once, on an empty data volume).
CREATE DATABASE dagster;
CREATE DATABASE mlflow;
CREATE DATABASE lakefs;
