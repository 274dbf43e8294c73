"""Shared fixtures: one Spark session for the whole test run, and a fresh llmops home per test."""

from __future__ import annotations

import os

import pytest

from resources import build_resources
from resources.spark import build_session


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    session = build_session("local[2]", {"spark.sql.shuffle.partitions": "4"},
                            str(tmp_path_factory.mktemp("spark")))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One cache for the run, so DeepSpeed's CPU ops compile once, not once per test."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def home(tmp_path, monkeypatch, cache_dir):
    """An empty LLMOPS_HOME under the test's tmp dir."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("LLMOPS_HOME", str(h))
    monkeypatch.setenv("LLMOPS_CACHE", str(cache_dir))
    return h


@pytest.fixture
def llmops_resources(home, spark):
    """The real resources on the embedded defaults, rooted in the test's home."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["LLMOPS_HOME"] = str(home)
    return build_resources(env)
