"""Human review of generations: a queue of samples per model version, and the verdicts people record.

Two append-only Delta tables under the lakehouse root (delta-rs; small, so no Spark):

    review_queue     review_id, model_name, model_version, kind, prompt, output, reference, created_at
    review_verdicts  review_id, verdict (good | bad | unsure), reviewer, comment, reviewed_at

The newest verdict per review_id counts. `root` may be an `s3://` lakehouse root: then pass the
lakehouse's `storage_options()`. Record one from a shell:

    python -m llm_assets.evaluation.review pending --model llmops-demo --version 2
    python -m llm_assets.evaluation.review record <review_id> bad --reviewer ana --comment "repeats itself"
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import TableNotFoundError

QUEUE, VERDICTS = "review_queue", "review_verdicts"
VERDICT_CHOICES = ("good", "bad", "unsure")

_QUEUE_SCHEMA = pa.schema([("review_id", pa.string()), ("model_name", pa.string()), ("model_version", pa.string()),
                           ("kind", pa.string()), ("prompt", pa.string()), ("output", pa.string()),
                           ("reference", pa.string()), ("created_at", pa.float64())])
_VERDICT_SCHEMA = pa.schema([("review_id", pa.string()), ("verdict", pa.string()), ("reviewer", pa.string()),
                             ("comment", pa.string()), ("reviewed_at", pa.float64())])


def review_id(model_name: str, model_version: str, kind: str, prompt: str) -> str:
    return hashlib.sha256(f"{model_name}\0{model_version}\0{kind}\0{prompt}".encode()).hexdigest()[:16]


def _uri(root: str | Path, table: str) -> str:
    return f"{str(root).rstrip('/')}/{table}"


def _rows(uri: str, storage_options: dict[str, str] | None) -> list[dict]:
    try:
        return DeltaTable(uri, storage_options=storage_options).to_pyarrow_table().to_pylist()
    except TableNotFoundError:
        return []


def enqueue(root: str | Path, model_name: str, model_version: str, samples: list[dict],
            storage_options: dict[str, str] | None = None) -> int:
    """Add samples ({kind, prompt, output, reference?}) of a model version; ones already queued are skipped.

    Returns how many were added.
    """
    table = _uri(root, QUEUE)
    queued = {r["review_id"] for r in _rows(table, storage_options)}
    now = time.time()
    new = []
    for s in samples:
        rid = review_id(model_name, model_version, s["kind"], s["prompt"])
        if rid not in queued:
            queued.add(rid)
            new.append({"review_id": rid, "model_name": model_name, "model_version": model_version,
                        "kind": s["kind"], "prompt": s["prompt"], "output": s["output"],
                        "reference": s.get("reference", ""), "created_at": now})
    if new:
        write_deltalake(table, pa.Table.from_pylist(new, schema=_QUEUE_SCHEMA), mode="append",
                        storage_options=storage_options)
    return len(new)


def record(root: str | Path, rid: str, verdict: str, reviewer: str = "", comment: str = "",
           storage_options: dict[str, str] | None = None) -> None:
    """Append a verdict for a queued sample; raises ValueError for an unknown id or verdict."""
    if verdict not in VERDICT_CHOICES:
        raise ValueError(f"verdict {verdict!r} is not one of {list(VERDICT_CHOICES)}")
    if rid not in {r["review_id"] for r in _rows(_uri(root, QUEUE), storage_options)}:
        raise ValueError(f"review_id {rid!r} is not in the {QUEUE} table under {root}")
    row = {"review_id": rid, "verdict": verdict, "reviewer": reviewer, "comment": comment, "reviewed_at": time.time()}
    write_deltalake(_uri(root, VERDICTS), pa.Table.from_pylist([row], schema=_VERDICT_SCHEMA), mode="append",
                    storage_options=storage_options)


def _latest_verdicts(root: str | Path, storage_options: dict[str, str] | None) -> dict[str, str]:
    latest: dict[str, dict] = {}
    for r in _rows(_uri(root, VERDICTS), storage_options):
        if r["review_id"] not in latest or r["reviewed_at"] >= latest[r["review_id"]]["reviewed_at"]:
            latest[r["review_id"]] = r
    return {rid: r["verdict"] for rid, r in latest.items()}


def items(root: str | Path, model_name: str, model_version: str,
          storage_options: dict[str, str] | None = None) -> list[dict]:
    """The queued samples of one model version, each with its latest verdict (None while pending)."""
    verdicts = _latest_verdicts(root, storage_options)
    return [{**r, "verdict": verdicts.get(r["review_id"])} for r in _rows(_uri(root, QUEUE), storage_options)
            if r["model_name"] == model_name and r["model_version"] == model_version]


def summary(root: str | Path, model_name: str, model_version: str,
            storage_options: dict[str, str] | None = None) -> dict:
    """Queued, pending and per-verdict counts, and the share judged good among those judged good or bad."""
    queued = items(root, model_name, model_version, storage_options)
    counts = Counter(i["verdict"] for i in queued if i["verdict"])
    judged = counts["good"] + counts["bad"]
    return {"queued": len(queued), "pending": sum(i["verdict"] is None for i in queued),
            **{v: counts[v] for v in VERDICT_CHOICES},
            "good_rate": counts["good"] / judged if judged else None}


def main(argv: list[str] | None = None) -> int:
    from resources.settings import home_from_env

    parser = argparse.ArgumentParser(prog="python -m llm_assets.evaluation.review", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(Path(home_from_env()) / "lakehouse"), help="the lakehouse root")
    sub = parser.add_subparsers(dest="command", required=True)
    pending = sub.add_parser("pending", help="list samples of a model version that have no verdict yet")
    pending.add_argument("--model", required=True)
    pending.add_argument("--version", required=True)
    rec = sub.add_parser("record", help="record a verdict")
    rec.add_argument("review_id")
    rec.add_argument("verdict", choices=VERDICT_CHOICES)
    rec.add_argument("--reviewer", default="")
    rec.add_argument("--comment", default="")
    args = parser.parse_args(argv)
    if args.command == "pending":
        for i in items(args.root, args.model, args.version):
            if i["verdict"] is None:
                print(f"{i['review_id']}  [{i['kind']}]  {i['prompt']!r} -> {i['output']!r}")
        return 0
    try:
        record(args.root, args.review_id, args.verdict, args.reviewer, args.comment)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"recorded {args.verdict} for {args.review_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
