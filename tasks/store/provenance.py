"""What produced a set of results: code version, encoders and description templates.

metrics.json carries this as its "provenance" object, so a number in a report can be
traced to the code and the text settings behind it without the workspace.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

from tasks.store import catalog
from tasks.store.caching import code_digest

SOURCE_PACKAGES = ("cscf_model", "tasks", "flows")


def code_version() -> dict[str, Any]:
    """Package version, git commit (with "-dirty" for uncommitted changes; None when not run
    from a checkout) and a hash of the source actually imported, which holds either way."""
    checkout, commit = _checkout(), None
    if checkout is not None:
        try:
            commit = subprocess.run(["git", "-C", str(checkout), "describe", "--always", "--dirty", "--abbrev=40"],
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"package": importlib.metadata.version("cscf"), "git": commit, "source_sha256": code_digest(SOURCE_PACKAGES)}


def _checkout() -> Path | None:
    """The source folder of an editable install (`pip install -e`), as pip recorded it
    (PEP 610 direct_url.json); None for a wheel, whose files have no commit."""
    records = [d.read_text("direct_url.json") for d in importlib.metadata.distributions(name="cscf")]
    # A checkout also holds build metadata (cscf.egg-info) without the record: skip it.
    url = next((json.loads(r) for r in records if r), {})
    if not url.get("dir_info", {}).get("editable") or not url.get("url", "").startswith("file://"):
        return None
    return Path(urllib.parse.unquote(urllib.parse.urlparse(url["url"]).path))


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
