"""The human-review queue and verdicts as real Delta tables, through the module and its command line."""

import pytest
from deltalake import DeltaTable

from llm_assets.evaluation import review

SAMPLES = [{"kind": "qa", "prompt": "When?", "output": "at six", "reference": "six"},
           {"kind": "sampled", "prompt": "The", "output": "the the the"}]


def test_queue_verdicts_and_summary(tmp_path):
    assert review.enqueue(tmp_path, "m", "1", SAMPLES) == 2
    assert review.enqueue(tmp_path, "m", "1", SAMPLES) == 0  # already queued
    assert review.enqueue(tmp_path, "m", "2", SAMPLES[:1]) == 1
    assert DeltaTable(str(tmp_path / "review_queue")).to_pyarrow_table().num_rows == 3  # any Delta reader

    qa, sampled = sorted(review.items(tmp_path, "m", "1"), key=lambda i: i["kind"])
    assert qa["verdict"] is None and qa["reference"] == "six"
    review.record(tmp_path, qa["review_id"], "bad", reviewer="ana")
    review.record(tmp_path, qa["review_id"], "good", reviewer="ana", comment="close enough")  # newest counts
    review.record(tmp_path, sampled["review_id"], "bad")
    assert review.summary(tmp_path, "m", "1") == {"queued": 2, "pending": 0, "good": 1, "bad": 1, "unsure": 0,
                                                  "good_rate": 0.5}
    assert review.summary(tmp_path, "m", "2")["pending"] == 1 and review.summary(tmp_path, "m", "2")["good_rate"] is None


def test_bad_verdicts_and_ids_are_refused(tmp_path):
    review.enqueue(tmp_path, "m", "1", SAMPLES)
    rid = review.items(tmp_path, "m", "1")[0]["review_id"]
    with pytest.raises(ValueError, match="verdict 'meh' is not one of"):
        review.record(tmp_path, rid, "meh")
    with pytest.raises(ValueError, match="review_id 'nope' is not in the review_queue table"):
        review.record(tmp_path, "nope", "good")


def test_command_line(tmp_path, capsys):
    review.enqueue(tmp_path, "m", "1", SAMPLES)
    assert review.main(["--root", str(tmp_path), "pending", "--model", "m", "--version", "1"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 2
    rid = listed[0].split()[0]
    assert review.main(["--root", str(tmp_path), "record", rid, "good", "--reviewer", "bo"]) == 0
    assert review.main(["--root", str(tmp_path), "record", "unknown", "good"]) == 2
    assert review.main(["--root", str(tmp_path), "pending", "--model", "m", "--version", "1"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2  # "recorded ..." and the one still pending
