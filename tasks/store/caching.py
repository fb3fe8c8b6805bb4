"""Cache keys for stages, and the Prefect cache policy that uses them.

A stage's key hashes everything its output depends on:
- its parameters (upstream stages are passed by *key*, so their content is covered),
- the content of user files it reads (classes.csv, features, prompt templates), not
  their path: Prefect's INPUTS policy would hash only the path string,
- the source of its own module and of the code it calls (TASK_SOURCE would see only
  the task body, not the model package).

Outputs are named by that key, so a stale file can never be mistaken for a fresh one,
and the same key works with or without a Prefect server.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Optional

from filelock import FileLock
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from tasks.store import catalog
from tasks.store.progress import STATUS

RESULTS_DIR = ".prefect-results"
LOCKS_DIR = ".locks"


def file_digest(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names + bytes)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


@lru_cache(maxsize=None)
def code_digest(module_names: tuple[str, ...]) -> str:
    """sha256 of the source of some modules or packages (every .py file of a package)."""
    h = hashlib.sha256()
    for name in module_names:
        module = importlib.import_module(name)
        path = Path(inspect.getfile(module))
        files = sorted(path.parent.rglob("*.py")) + sorted(path.parent.rglob("*.json")) if path.name == "__init__.py" else [path]
        for f in files:
            h.update(f.read_bytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: `build(workspace, key, **params)` writes the files named by `outputs`.

    files: parameters holding user file paths (hashed by content; None is allowed).
    code: modules whose source enters the key (the stage's own module is always in).
    complete: an extra check that the outputs are whole (e.g. every shard of a folder).
    optional: parameters added after the stage existed, left out of the key while None, so
    that a run which does not use them keeps the key it had before they were added.
    """

    name: str
    build: Callable[..., None]
    outputs: tuple[str, ...] = (".parquet",)
    files: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    complete: Callable[[Path, str], bool] | None = None
    optional: tuple[str, ...] = ()

    def key(self, params: dict[str, Any]) -> str:
        """The cache key of this stage for these parameters (workspace excluded)."""
        payload = {
            "stage": self.name,
            "params": {k: v for k, v in params.items()
                       if k != "workspace" and not (k in self.optional and v is None)},
            "files": {f: file_digest(params[f]) for f in self.files if params.get(f)},
            "code": code_digest((self.build.__module__, *self.code)),
        }
        blob = json.dumps(payload, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def output_paths(self, workspace: str | Path, key: str) -> list[Path]:
        return [catalog.stage_output(Path(workspace), self.name, key, s) for s in self.outputs]

    def is_built(self, workspace: str | Path, key: str) -> bool:
        if not all(p.exists() for p in self.output_paths(workspace, key)):
            return False
        return self.complete is None or self.complete(Path(workspace), key)

    def run(self, params: dict[str, Any]) -> str:
        """Build the outputs unless they exist; return the key downstream stages take.

        The build holds the key's lock: a second run with the same key (another `cscf run`
        on this workspace) waits, then finds the outputs built. Its outputs, partial
        folders and checkpoints thus have one writer at a time.
        """
        key, workspace = self.key(params), Path(params["workspace"])
        if self.is_built(workspace, key):
            return key
        STATUS.begin(f"{self.name}[{params['method']}]" if "method" in params else self.name)
        with stage_lock(workspace, self.name, key):
            if not self.is_built(workspace, key):
                self.build(workspace, key, **{k: v for k, v in params.items() if k != "workspace"})
        STATUS.end()
        return key


def stage_lock(workspace: Path, name: str, key: str) -> FileLock:
    """The lock of one stage output in a workspace: an OS file lock (flock), so a killed
    holder releases it at once and never leaves a stale lock behind."""
    folder = workspace / LOCKS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(folder / f"{name}-{key}.lock")


@dataclass
class StageCachePolicy(CachePolicy):
    """Prefect cache policy keyed by `Stage.key`, which refuses hits on deleted outputs.

    Prefect keeps a result record per key; if someone deleted the stage's files, the
    record would point at nothing, so it is removed and the stage runs again.
    """

    stage: Optional[Stage] = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> Optional[str]:
        assert self.stage is not None
        key = self.stage.key(inputs)
        if not self.stage.is_built(inputs["workspace"], key):
            (Path(inputs["workspace"]) / RESULTS_DIR / f"{self.stage.name}-{key}").unlink(missing_ok=True)
        return f"{self.stage.name}-{key}"
