"""Checkpoint manifests without DeepSpeed: sealing, verifying, skipping damaged tags, keeping the last N."""

from llm_assets.training import checkpoints


def make_tag(root, step, sealed=True):
    tag = root / checkpoints.tag_name(step)
    (tag / "sub").mkdir(parents=True)
    (tag / "model_states.pt").write_bytes(b"weights %d" % step)
    (tag / "sub" / "optim.pt").write_bytes(b"optimizer %d" % step)
    if sealed:
        checkpoints.seal(tag, step)
    return tag


def test_newest_sound_tag_wins_and_damaged_ones_are_named(tmp_path):
    make_tag(tmp_path, 5)
    t10 = make_tag(tmp_path, 10)
    assert checkpoints.newest_valid(tmp_path) == ("step00000010", [])
    (t10 / "sub" / "optim.pt").write_bytes(b"optimizer 99")  # same size, other bytes
    make_tag(tmp_path, 15, sealed=False)
    tag, skipped = checkpoints.newest_valid(tmp_path)
    assert tag == "step00000005"
    assert "step00000015 has no llmops_checkpoint.json" in skipped[0]
    assert skipped[1] == f"{t10 / 'sub' / 'optim.pt'} is corrupt: its sha256 differs from the manifest"


def test_truncated_and_missing_files(tmp_path):
    tag = make_tag(tmp_path, 5)
    (tag / "model_states.pt").write_bytes(b"w")
    assert "has 1 bytes, its manifest says 9" in checkpoints.problem(tag)
    (tag / "model_states.pt").unlink()
    assert checkpoints.problem(tag) == f"{tag / 'model_states.pt'} is missing"
    assert checkpoints.newest_valid(tmp_path) == (None, [checkpoints.problem(tag)])


def test_mark_latest_keeps_the_newest_n(tmp_path):
    for step in (5, 10, 15):
        make_tag(tmp_path, step)
    checkpoints.mark_latest(tmp_path, "step00000015", keep=2)
    assert (tmp_path / "latest").read_text() == "step00000015"
    assert [t.name for t in checkpoints.tags(tmp_path)] == ["step00000010", "step00000015"]
