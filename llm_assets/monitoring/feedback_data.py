"""A fine-tuning dataset from user feedback: the prompt/response pairs people rated good.

The newest feedback per request counts (see `quality.positive`); a request whose prompt or response
was not logged, or whose answer failed, cannot become an example and is counted as skipped.
"""

from __future__ import annotations

import pandas as pd

from llm_assets.monitoring.quality import latest_feedback, positive

COLUMNS = ["request_id", "prompt", "response", "model", "model_version", "prompt_version", "rating", "thumbs",
           "comment"]


def good_pairs(requests: pd.DataFrame, feedback: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """(examples, counts): one example per request whose newest feedback is good."""
    fb = latest_feedback(feedback)
    good = fb[[positive(r, t) for r, t in zip(fb["rating"], fb["thumbs"])]]
    if requests.empty or good.empty:
        return pd.DataFrame(columns=COLUMNS), {"feedback": len(fb), "good": len(good), "examples": 0,
                                               "skipped": len(good)}
    req = requests[["request_id", "prompt", "response", "model", "model_version", "prompt_version", "status"]]
    joined = good.merge(req, on="request_id", how="inner")
    usable = joined[(joined["status"] == 200) & (joined["prompt"].str.strip() != "")
                    & (joined["response"].str.strip() != "")]
    examples = usable[COLUMNS].sort_values("request_id").reset_index(drop=True)
    return examples, {"feedback": len(fb), "good": len(good), "examples": len(examples),
                      "skipped": len(good) - len(examples)}


def to_spark(spark, examples: pd.DataFrame):
    from pyspark.sql import types as T

    s = T.StringType()
    schema = T.StructType([T.StructField(c, T.IntegerType() if c == "rating" else s, True) for c in COLUMNS])
    rows = [tuple(None if pd.isna(v) else (int(v) if c == "rating" else str(v)) for c, v in zip(COLUMNS, r))
            for r in examples[COLUMNS].itertuples(index=False)]
    return spark.createDataFrame(rows, schema).coalesce(1)
