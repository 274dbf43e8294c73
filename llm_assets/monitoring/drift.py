"""Input and output drift of live traffic against a reference window, with Evidently.

Reference: the earliest `window` answered requests of the reference model version (the promoted one,
or one named in config). Current: the latest `window` answered requests after those. Both prompts
(input drift) and responses (output drift) are compared two ways:

- embeddings (the packaged all-MiniLM-L6-v2): Evidently's classifier method, the ROC AUC of a model
  told to separate the windows (0.5: indistinguishable), plus the cosine distance of the mean embeddings;
- text statistics (length, words, word length, digits, non-ASCII and upper-case shares): Evidently's
  per-column K-S test; the share of statistics with p < 0.05.

The Evidently report is saved as HTML; the key numbers come back as a dict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

STATS = ("chars", "words", "word_len", "digit_share", "non_ascii_share", "upper_share")


@dataclass(frozen=True)
class DriftResult:
    numbers: dict
    drifted: bool
    reasons: list[str]
    report_path: str | None


def text_stats(texts: list[str]) -> pd.DataFrame:
    """Per text: characters, words, mean word length and character-class shares."""
    rows = []
    for t in texts:
        n = max(len(t), 1)
        words = t.split()
        rows.append({"chars": len(t), "words": len(words),
                     "word_len": float(np.mean([len(w) for w in words])) if words else 0.0,
                     "digit_share": sum(c.isdigit() for c in t) / n,
                     "non_ascii_share": sum(ord(c) > 127 for c in t) / n,
                     "upper_share": sum(c.isupper() for c in t) / n})
    return pd.DataFrame(rows, columns=list(STATS)).astype(float)


def windows(rows: pd.DataFrame, reference_version: str, window: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(reference, current) windows of answered requests; see the module docstring."""
    ok = rows[rows["status"] == 200].sort_values("timestamp")
    reference = ok[ok["model_version"] == reference_version].head(window)
    rest = ok[~ok["request_id"].isin(reference["request_id"])]
    return reference, rest.tail(window)


def _frame(texts: list[str], vectors: np.ndarray, prefix: str) -> pd.DataFrame:
    stats = text_stats(texts).add_prefix(f"{prefix}_")
    emb = pd.DataFrame(vectors, columns=[f"{prefix}_e{i}" for i in range(vectors.shape[1])])
    return pd.concat([stats, emb], axis=1)


def compare(reference: pd.DataFrame, current: pd.DataFrame, embed, report_path: str | Path | None, *,
            auc_threshold: float = 0.75, stats_share_threshold: float = 0.5, p_value: float = 0.05) -> DriftResult:
    """Drift of `current` against `reference` (request-log rows); `embed(texts) -> [n, d]` array."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import EmbeddingsDrift, ValueDrift
    from evidently.metrics.embeddings import ModelDriftMethod

    frames = {}
    for name, rows in (("reference", reference), ("current", current)):
        prompts, responses = rows["prompt"].fillna("").tolist(), rows["response"].fillna("").tolist()
        frames[name] = pd.concat([_frame(prompts, embed(prompts), "input"),
                                  _frame(responses, embed(responses), "output")], axis=1)
    dim = sum(c.startswith("input_e") for c in frames["reference"].columns)
    stat_cols = [f"{side}_{s}" for side in ("input", "output") for s in STATS]
    # Evidently's report plots each column's density, which fails on a constant column: those get
    # scipy's K-S test instead.
    varying = [c for c in stat_cols if min(frames[w][c].nunique() for w in frames) > 1]
    # Its embedding plot fails the same way when a window holds fewer than 3 distinct texts (a model that
    # always answers alike), and its t-SNE needs more than 30 rows: such sides get the same classifier test
    # computed here.
    sides = {side: [f"{side}_e{i}" for i in range(dim)] for side in ("input", "output")}
    enough = len(reference) + len(current) > 30
    in_evidently = [side for side, cols in sides.items()
                    if enough and min(len(frames[w][cols].drop_duplicates()) for w in frames) >= 3]
    definition = DataDefinition(numerical_columns=varying, embeddings={s: sides[s] for s in in_evidently})
    metrics = [EmbeddingsDrift(embeddings_name=side, drift_method=ModelDriftMethod(threshold=auc_threshold))
               for side in in_evidently]
    metrics += [ValueDrift(column=c, method="ks", threshold=p_value) for c in varying]
    snapshot = Report(metrics).run(Dataset.from_pandas(frames["current"], data_definition=definition),
                                   Dataset.from_pandas(frames["reference"], data_definition=definition))
    values = [float(m["value"]) for m in snapshot.dict()["metrics"]]
    aucs = dict(zip(in_evidently, values))
    for side, cols in sides.items():
        if side not in aucs:
            aucs[side] = classifier_auc(frames["reference"][cols].to_numpy(), frames["current"][cols].to_numpy())
    pvals = dict(zip(varying, values[len(in_evidently):]))
    for c in stat_cols:
        if c not in pvals:
            pvals[c] = float(ks_2samp(frames["reference"][c], frames["current"][c]).pvalue)
    numbers = {"reference_rows": len(reference), "current_rows": len(current)}
    reasons = []
    for side, auc in aucs.items():
        ref_mean = frames["reference"][[f"{side}_e{i}" for i in range(dim)]].to_numpy().mean(axis=0)
        cur_mean = frames["current"][[f"{side}_e{i}" for i in range(dim)]].to_numpy().mean(axis=0)
        cosine = 1 - float(ref_mean @ cur_mean / (np.linalg.norm(ref_mean) * np.linalg.norm(cur_mean) or 1.0))
        numbers[f"{side}_embedding_auc"] = auc
        numbers[f"{side}_embedding_cosine_distance"] = cosine
        if auc > auc_threshold:
            reasons.append(f"{side} embedding drift: classifier AUC {auc:.3f} > {auc_threshold}")
    for side in ("input", "output"):
        drifted = [c for c in stat_cols if c.startswith(side) and pvals[c] < p_value]
        share = len(drifted) / len(STATS)
        numbers[f"{side}_stats_drift_share"] = share
        numbers.update({f"{c}_p": pvals[c] for c in stat_cols if c.startswith(side)})
        numbers[f"{side}_chars_mean_ratio"] = float(
            frames["current"][f"{side}_chars"].mean() / max(frames["reference"][f"{side}_chars"].mean(), 1e-9))
        if share >= stats_share_threshold:
            reasons.append(f"{side} text statistics drift: {len(drifted)}/{len(STATS)} with K-S p < {p_value} "
                           f"({', '.join(c.removeprefix(side + '_') for c in drifted)})")
    if report_path is not None:
        Path(report_path).parent.mkdir(parents=True, exist_ok=True)
        snapshot.save_html(str(report_path))
    return DriftResult(numbers, bool(reasons), reasons, str(report_path) if report_path else None)


def classifier_auc(reference: np.ndarray, current: np.ndarray) -> float:
    """Evidently's embedding drift method: ROC AUC of a classifier that tells the windows apart on a held-out
    half (0.5: indistinguishable)."""
    from sklearn.linear_model import SGDClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split

    x = np.vstack([reference, current])
    y = np.r_[np.ones(len(reference)), np.zeros(len(current))]
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.5, random_state=42, shuffle=True)
    clf = SGDClassifier(loss="log_loss", random_state=42).fit(x_train, y_train)
    return float(roc_auc_score(y_test, clf.predict_proba(x_test)[:, 1]))


def reference_version(routes: dict | None, rows: pd.DataFrame, configured: str = "") -> str | None:
    """The version whose earliest window is the reference: `configured`, else the version with the most
    route weight (the promoted one; a canary gets the small share), else the most-logged version."""
    if configured:
        return configured
    versions = [(float(v.get("weight", 0)), name) for m in (routes or {}).get("models", {}).values()
                for name, v in m.get("versions", {}).items()]
    if versions:
        return max(versions)[1]
    if rows.empty:
        return None
    return str(rows["model_version"].value_counts().idxmax())
