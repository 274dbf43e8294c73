"""The license of each installed package's files, read from its distribution's METADATA."""

from __future__ import annotations

import csv
import os
from collections import defaultdict
from email.parser import HeaderParser
from pathlib import Path


def metadata_license(metadata: str) -> str | None:
    """The license a package's METADATA declares: `License-Expression`, a one-line `License`, else its
    `Classifier: License :: ...` names. A multi-line `License` (a whole license text) names nothing."""
    headers = HeaderParser().parsestr(metadata, headersonly=True)
    expression = str(headers.get("License-Expression") or "").strip()
    if expression:
        return expression
    declared = str(headers.get("License") or "").strip()
    if declared and "\n" not in declared and len(declared) <= 100 and declared.upper() not in ("UNKNOWN", "NONE"):
        return declared
    names = [str(c).split("::")[-1].strip() for c in headers.get_all("Classifier") or []
             if str(c).startswith("License ::")]
    return "; ".join(dict.fromkeys(n for n in names if n)) or None


def file_licenses(files: list[str], site_packages: str) -> dict[str, str]:
    """{file URI: license} for the files under `site_packages` that an installed distribution owns.

    A file belongs to the `*.dist-info` whose RECORD lists it; failing that, to the one distribution
    that owns its top-level directory (by RECORD or top_level.txt), and a `*.dist-info` directory's
    own files to it (a vendored one's too: `pkg/_vendor/x-1.0.dist-info/`). Files of no distribution,
    or of one that declares no license, are left out.
    """
    root = Path(site_packages)
    owner: dict[str, str] = {}
    top_owners: dict[str, set[str]] = defaultdict(set)
    licenses: dict[str, str | None] = {}
    for dist in sorted(root.glob("*.dist-info")):
        metadata = dist / "METADATA"
        licenses[dist.name] = metadata_license(metadata.read_text(errors="replace")) if metadata.is_file() else None
        top_owners[dist.name].add(dist.name)
        if (record := dist / "RECORD").is_file():
            for row in csv.reader(record.read_text(errors="replace").splitlines()):
                if row and row[0] and not row[0].startswith(("..", "/")):
                    owner[row[0]] = dist.name
                    top_owners[row[0].split("/", 1)[0]].add(dist.name)
        if (top_level := dist / "top_level.txt").is_file():
            for name in top_level.read_text(errors="replace").split():
                top_owners[name].add(dist.name)
    found = {}
    for path in files:
        try:
            relative = Path(os.path.abspath(path)).relative_to(root).as_posix()
        except ValueError:
            continue
        parts = relative.split("/")
        # A vendored distribution's own metadata (`pkg/_vendor/x-1.0.dist-info/`) names its license.
        nested = next((i for i in range(len(parts) - 2, 0, -1) if parts[i].endswith(".dist-info")), None)
        if nested is not None:
            dist = "/".join(parts[:nested + 1])
            if dist not in licenses:
                metadata = root / dist / "METADATA"
                licenses[dist] = metadata_license(metadata.read_text(errors="replace")) if metadata.is_file() else None
        else:
            dist = owner.get(relative)
            if dist is None and len(owners := top_owners.get(parts[0], set())) == 1:
                dist = next(iter(owners))
        if dist is not None and licenses.get(dist):
            found[_file_uri(path)] = licenses[dist]
    return found


def _file_uri(path: str) -> str:
    return "file://" + os.path.abspath(path)  # `file:///abs/path`, as ingest spells sources
