"""What produced a set of results: code version, encoders and description templates.

metrics.json carries this as its "provenance" object, so a number in a report can be
traced to the code and the text settings behind it without the workspace.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
from pathlib import Path
from typing import Any

from . import catalog
from .caching import code_digest

SOURCE_PACKAGES = ("cscf_model", "tasks", "flows")


def code_version() -> dict[str, Any]:
    """Package version, git commit (with "-dirty" for uncommitted changes; None outside a
    checkout) and a hash of the source actually imported, which holds either way."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty", "--abbrev=40"],
                                capture_output=True, text=True, timeout=10, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {"package": importlib.metadata.version("cscf"), "git": commit, "source_sha256": code_digest(SOURCE_PACKAGES)}


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


def provenance(workspace: Path, embeddings_key: str) -> dict[str, Any]:
    """The "provenance" object of metrics.json for results built on `embeddings_key`.

    The class-embedding and description stages leave a small JSON beside their output
    (encoder name; description mode with template and writer hashes); outputs cached
    before they did give None there.
    """
    embeddings = _read_json(catalog.stage_output(workspace, "class_embeddings", embeddings_key, ".provenance.json"))
    descriptions = None
    if embeddings is not None:
        descriptions = _read_json(
            catalog.stage_output(workspace, "descriptions", embeddings["descriptions_key"], ".settings.json"))
    return {
        "code": code_version(),
        "text_encoder": embeddings and embeddings["encoder"],
        "descriptions": descriptions,
    }
