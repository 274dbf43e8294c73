"""Prompt templates versioned by content, registered in an append-only Delta table."""

import pytest
from deltalake import DeltaTable

from llm_assets.deployment import prompts


def write(directory, name, template, file=None):
    (directory / (file or f"{name}.yaml")).write_text(f"name: {name}\ntemplate: |-\n  {template}\n")


def test_shipped_templates_load_with_content_versions():
    shipped = prompts.load_templates()
    assert [p.name for p in shipped] == ["assistant"]
    assert shipped[0].version == prompts.version_of(shipped[0].template) and len(shipped[0].version) == 12


def test_an_edit_is_a_new_version_and_the_same_text_is_not_registered_twice(tmp_path):
    src, root = tmp_path / "prompts", tmp_path / "lakehouse"
    src.mkdir()
    write(src, "assistant", "Be brief.")
    first = prompts.register(root, prompts.load_templates(src))
    assert len(first) == 1
    assert prompts.register(root, prompts.load_templates(src)) == []
    write(src, "assistant", "Be brief and kind.")
    second = prompts.register(root, prompts.load_templates(src))
    assert len(second) == 1 and second[0].version != first[0].version
    rows = prompts.registered(root)
    assert [r["version"] for r in rows] == [first[0].version, second[0].version]
    assert DeltaTable(str(root / prompts.TABLE)).version() == 1  # another reader opens it


@pytest.mark.parametrize("text, message", [
    ("name: a\n", "non-empty string `template`"),
    ("template: hi\n", "non-empty string `name`"),
    ("name: [a\n", "not valid YAML"),
])
def test_a_malformed_template_names_the_file_and_the_problem(tmp_path, text, message):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        prompts.load_templates(tmp_path)
    assert "bad.yaml" in str(e.value)


def test_two_files_with_one_name_are_refused(tmp_path):
    write(tmp_path, "assistant", "One.", "a.yaml")
    write(tmp_path, "assistant", "Two.", "b.yaml")
    with pytest.raises(ValueError, match="also used by"):
        prompts.load_templates(tmp_path)
