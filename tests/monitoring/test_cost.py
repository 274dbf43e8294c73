"""Serving cost from a price table."""

import pandas as pd
import pytest

from llm_assets.monitoring.cost import PriceTable, budget_verdict, daily_costs
from llm_assets.monitoring.requestlog import REQUEST_FIELDS, validate
from tests.monitoring.logs import T0, request_row


def frame(rows):
    df = pd.DataFrame([validate(r, REQUEST_FIELDS) for r in rows])
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    return df


def test_daily_costs_per_version_cpu_and_gpu():
    # v3: one replica busy from t0-0.1s to t0+3599s (one hour); v4 on GPU: one request, billed the 1-minute floor
    rows = [request_row(0), request_row(3599), request_row(10, version="4", replica="http://g:1")]
    prices = PriceTable(cpu_hour_usd=0.05, replica_cpus=2, gpu_instance_hour_usd=3.0, gpu_versions=("4",))
    costs = daily_costs(frame(rows), prices).set_index("model_version")
    assert costs.loc["3", "billed_hours"] == pytest.approx(3599.1 / 3600)
    assert costs.loc["3", "cost_usd"] == pytest.approx(0.1 * 3599.1 / 3600)
    assert costs.loc["3", "tokens"] == 30 and costs.loc["3", "hourly_usd"] == pytest.approx(0.1)
    assert costs.loc["3", "cost_per_1k_tokens_usd"] == pytest.approx(costs.loc["3", "cost_usd"] / 30 * 1000)
    assert costs.loc["4", "cost_usd"] == pytest.approx(3.0 / 60)
    assert set(costs["day"]) == {T0.strftime("%Y-%m-%d")}


def test_budget_verdict():
    costs = daily_costs(frame([request_row(0), request_row(3599)]), PriceTable(cpu_hour_usd=1.0, replica_cpus=2))
    ok, day, total, why = budget_verdict(costs, daily_budget_usd=1.0)
    assert not ok and total == pytest.approx(2 * 3599.1 / 3600) and "over" in why
    assert budget_verdict(costs, daily_budget_usd=5.0)[0]
    assert budget_verdict(daily_costs(frame([request_row(0)]).iloc[0:0], PriceTable()), 1.0)[0]
