"""Drift between request windows, with the packaged MiniLM embedder and Evidently."""

import pandas as pd

from llm_assets.evaluation.rag import embed
from llm_assets.monitoring import drift
from llm_assets.monitoring.requestlog import REQUEST_FIELDS, validate
from tests.monitoring.logs import request_row

TECH = ["How do I train a tokenizer on my corpus?", "What learning rate should a small transformer use?",
        "Explain gradient checkpointing briefly.", "How does Spark partition a Delta table?",
        "What is a good batch size for fine-tuning?", "Why does my loss spike after warmup?"]
FOOD = ["¿Cuál es la mejor receta de paella valenciana?", "¿Cuánto tiempo se hornea un pan de masa madre?",
        "¿Qué vino combina con el queso manchego?", "¿Cómo se prepara un gazpacho andaluz?",
        "¿Qué especias lleva el chorizo casero?", "¿Cómo hago churros crujientes en casa?"]


def rows(prompts, start, n, version="3", reply="Here is a short technical answer."):
    return [request_row(start + i, version=version, prompt=f"{prompts[i % len(prompts)]} ({i})", response=reply)
            for i in range(n)]


def frame(records):
    df = pd.DataFrame([validate(r, REQUEST_FIELDS) for r in records])
    df["timestamp"] = pd.to_datetime(df["timestamp"], utc=True)
    return df


def test_windows_take_the_reference_versions_earliest_rows():
    df = frame(rows(TECH, 0, 10, version="3") + rows(TECH, 10, 10, version="4") + rows(TECH, 20, 10, version="3"))
    reference, current = drift.windows(df, "3", window=5)
    assert reference["request_id"].tolist() == [f"req-{i}" for i in range(5)]
    assert current["request_id"].tolist() == [f"req-{i}" for i in range(25, 30)]
    assert drift.reference_version({"models": {"m": {"versions": {"3": {"weight": 0.9}, "4": {"weight": 0.1}}}}},
                                   df) == "3"
    assert drift.reference_version(None, df) == "3" and drift.reference_version(None, df, "4") == "4"


def test_shifted_topic_and_language_drift_and_same_traffic_does_not(tmp_path):
    reference = frame(rows(TECH, 0, 30))
    same = frame(rows(TECH, 100, 30))
    shifted = frame(rows(FOOD, 200, 30, reply="Aquí tienes una respuesta corta sobre cocina española."))
    stable = drift.compare(reference, same, embed, tmp_path / "same.html")
    moved = drift.compare(reference, shifted, embed, tmp_path / "moved.html")
    assert not stable.drifted, stable.reasons
    assert moved.drifted
    assert moved.numbers["input_embedding_auc"] > 0.75 > stable.numbers["input_embedding_auc"]
    assert moved.numbers["input_embedding_cosine_distance"] > stable.numbers["input_embedding_cosine_distance"]
    assert any(r.startswith("input embedding drift") for r in moved.reasons)
    assert any(r.startswith("output") for r in moved.reasons)
    assert (tmp_path / "moved.html").stat().st_size > 10_000
