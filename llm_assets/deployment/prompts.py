"""Prompt templates, versioned by content: the files in `llm_assets/deployment/prompts/` and their history.

A template file is YAML with `name`, `template` (the system message) and an optional `description`.
A version is the first 12 hex digits of the template's sha256, so the same text is always the same
version and any edit is a new one. `prompt_registry` (a Delta table under the lakehouse root, delta-rs)
keeps every version ever seen, with when it was first registered; rows are only appended.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import yaml
from deltalake import DeltaTable, write_deltalake

TEMPLATES_DIR = Path(__file__).with_name("prompts")
TABLE = "prompt_registry"
_SCHEMA = pa.schema([("name", pa.string()), ("version", pa.string()), ("template", pa.string()),
                     ("description", pa.string()), ("source", pa.string()), ("registered_at", pa.float64())])


@dataclass(frozen=True)
class PromptVersion:
    name: str
    version: str
    template: str
    description: str = ""
    source: str = ""


def version_of(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]


def load_templates(directory: str | Path = TEMPLATES_DIR) -> list[PromptVersion]:
    """Every `*.yaml` template in `directory`, sorted by name; a malformed file raises naming the file."""
    found: dict[str, PromptVersion] = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        try:
            spec = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ValueError(f"prompt template {path}: not valid YAML: {e}") from e
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"].strip():
            raise ValueError(f"prompt template {path}: needs a non-empty string `name`")
        if not isinstance(spec.get("template"), str) or not spec["template"].strip():
            raise ValueError(f"prompt template {path}: needs a non-empty string `template`")
        if spec["name"] in found:
            raise ValueError(f"prompt template {path}: name {spec['name']!r} is also used by {found[spec['name']].source}")
        found[spec["name"]] = PromptVersion(spec["name"], version_of(spec["template"]), spec["template"],
                                            str(spec.get("description") or ""), str(path))
    return [found[n] for n in sorted(found)]


def registered(root: str | Path) -> list[dict]:
    """All registered versions, oldest first."""
    table = Path(root) / TABLE
    if not (table / "_delta_log").is_dir():
        return []
    return sorted(DeltaTable(str(table)).to_pyarrow_table().to_pylist(), key=lambda r: r["registered_at"])


def register(root: str | Path, prompts: list[PromptVersion]) -> list[PromptVersion]:
    """Append the versions not registered yet; returns them (empty when nothing changed)."""
    known = {(r["name"], r["version"]) for r in registered(root)}
    new = [p for p in prompts if (p.name, p.version) not in known]
    if new:
        now = time.time()
        rows = [{**asdict(p), "registered_at": now} for p in new]
        write_deltalake(str(Path(root) / TABLE), pa.Table.from_pylist(rows, schema=_SCHEMA), mode="append")
    return new
