"""The class-description stage (paper appendix A): every class name becomes descriptive text.

The paper encodes an LLM's description of each class rather than the bare name
(c_i = CLIP(LLM(Y_i)), eq. 11), because sentences about what a class looks like and
sounds like carry more shared meaning between seen and unseen classes than names do.

Per class, the first source that has text wins:
1. the `description` column of classes.csv ("user"),
2. a CSV of published descriptions ("published"),
3. an LLM through the `openai` client ("llm:<model>"), or, with no API key, a
   deterministic offline writer ("offline") so the pipeline still runs with no network.

LLM answers are cached per class in small JSON files keyed by everything that shapes
the answer, so a rerun asks only for classes whose answer is not cached yet.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from tasks.store import catalog
from tasks.store.inputs import read_classes
from tasks.semantics.llm_client import ChatLLM, LLMCallAbandoned, LLMCallError, RetryPolicy

log = logging.getLogger("cscf.descriptions")

# Package data (tasks/semantics/prompts/), so an installed wheel has them too.
PROMPTS = Path(str(resources.files("tasks.semantics") / "prompts"))
DEFAULT_TEMPLATE = PROMPTS / "describe_v1.txt"
PLACEHOLDER = "{class_name}"
MODES = ("auto", "llm", "offline")

# The offline writer's phrasings: one per line of a template file, each with the
# {class_name} placeholder; n_descriptions > 1 takes the next lines (an ensemble). The
# default sets the name in a sight-and-sound context like the LLM descriptions of
# audio-visual data; `offline_neutral.txt` says nothing about the domain, and a one-line
# file that fits the data ("A quotation about {class_name}.") does better on text data.
DEFAULT_OFFLINE_TEMPLATE = PROMPTS / "offline_v1.txt"

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


class DescriptionError(RuntimeError):
    """The LLM could not describe some classes; nothing was produced for the stage."""


@dataclass(frozen=True)
class DescriptionSettings:
    """How class descriptions are made. Holds the NAME of the key's variable, never the key."""

    mode: str = "auto"  # "auto": llm when a key is available, else offline | "llm" | "offline"
    template: Path = DEFAULT_TEMPLATE  # prompt with a {class_name} placeholder
    offline_template: Path = DEFAULT_OFFLINE_TEMPLATE  # the offline writer's phrasings, one per line
    model: str = "gpt-4o-mini"
    base_url: str | None = None  # None: the openai client's convention (OPENAI_BASE_URL)
    api_key_env: str = "OPENAI_API_KEY"
    secret_block: str | None = None  # Prefect Secret block tried when the env variable is unset
    temperature: float = 0.0
    n_descriptions: int = 1  # texts per class; their embeddings form a prompt ensemble
    concurrency: int = 4  # classes in flight at once
    timeout_s: float = 30.0  # per HTTP request
    max_retries: int = 4  # retries after the first attempt, per request
    backoff_s: float = 1.0  # first retry delay; doubles with each retry
    published_csv: Path | None = None  # columns name, description_1, description_2, ...

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.n_descriptions < 1 or self.concurrency < 1:
            problems.append("n_descriptions and concurrency must be at least 1")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.backoff_s < 0:
            problems.append("timeout_s must be positive, max_retries and backoff_s not negative")
        if problems:
            raise ValueError("description settings: " + "; ".join(problems))
        # Callers pass strings from CLI or JSON parameters; keep one type inside.
        object.__setattr__(self, "template", Path(self.template))
        object.__setattr__(self, "offline_template", Path(self.offline_template))
        if self.published_csv is not None:
            object.__setattr__(self, "published_csv", Path(self.published_csv))

    def cache_fields(self) -> dict[str, Any]:
        """Everything that changes the stage's output (contents, not paths), never the key."""
        mode, _, _ = _resolve_mode(self)
        fields: dict[str, Any] = {
            "mode": mode,
            "n_descriptions": self.n_descriptions,
            "published_csv_sha256": _sha256(self.published_csv.read_bytes()) if self.published_csv else None,
        }
        if mode == "llm":
            fields |= _llm_fields(self, load_template(self.template))
        else:
            fields["offline_writer_sha256"] = _offline_fingerprint(load_offline_template(self.offline_template))
        return fields

    def model_record(self) -> dict[str, Any]:
        """What a saved model keeps so that classes added at prediction time are described
        as in training: the resolved mode and the template texts (not their paths)."""
        mode, _, _ = _resolve_mode(self)
        record: dict[str, Any] = {"mode": mode, "n_descriptions": self.n_descriptions,
                                  "offline_template": list(load_offline_template(self.offline_template))}
        if mode == "llm":
            record |= {"llm_template": load_template(self.template), "model": self.model, "temperature": self.temperature}
        return record


def generate_descriptions(classes: pd.DataFrame, settings: DescriptionSettings, cache_dir: Path) -> pa.Table:
    """Describe every class of `classes` (classes.csv as a frame) in `catalog.DESCRIPTIONS` form.

    Rows follow classes.csv order, one per description (several when a class has
    several published or generated texts). Raises `DescriptionError` if the LLM fails
    for good; answers already received stay cached in `cache_dir` for the rerun.
    """
    rows = _class_rows(classes)
    published = read_published(settings.published_csv) if settings.published_csv else {}
    chosen: dict[str, tuple[list[str], str]] = {}
    for name, user_text in rows:
        if user_text:
            chosen[name] = ([user_text], "user")
        elif published.get(name):
            chosen[name] = (published[name], "published")
    missing = [name for name, _ in rows if name not in chosen]
    if missing:
        chosen |= _generate(missing, settings, Path(cache_dir))

    ordered = [(name, text, chosen[name][1]) for name, _ in rows for text in chosen[name][0]]
    sources = Counter(chosen[name][1] for name, _ in rows)
    log.info(
        "descriptions: %d classes -> %d texts (%s)",
        len(rows),
        len(ordered),
        ", ".join(f"{count} {source}" for source, count in sources.items()),
    )
    names, texts, labels = zip(*ordered)
    return pa.table(
        {"class_name": list(names), "description": list(texts), "source": list(labels)},
        schema=catalog.DESCRIPTIONS,
    )


def readable_name(class_name: str) -> str:
    """'ApplyEyeMakeup' / 'cat_purring' -> 'Apply Eye Makeup' / 'cat purring': words the encoder knows."""
    return " ".join(_CAMEL_BOUNDARY.sub(" ", class_name.replace("_", " ")).split())


def offline_descriptions(class_name: str, n: int = 1, phrasings: tuple[str, ...] | None = None) -> list[str]:
    """`n` deterministic descriptions from the name alone (phrasings repeat past the last line)."""
    phrasings = phrasings or load_offline_template(DEFAULT_OFFLINE_TEMPLATE)
    return [render_prompt(phrasings[i % len(phrasings)], class_name) for i in range(n)]


def load_offline_template(path: Path) -> tuple[str, ...]:
    """The offline writer's phrasings: the file's non-empty lines, each with the placeholder."""
    path = Path(path)
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except OSError as exc:
        raise ValueError(f"offline description template {path}: cannot be read ({exc.strerror})") from None
    missing = [i + 1 for i, line in enumerate(lines) if PLACEHOLDER not in line]
    if not lines or missing:
        raise ValueError(f"offline description template {path}: every line needs a {PLACEHOLDER} placeholder "
                         f"(line(s) {missing or 'none: the file is empty'})")
    return tuple(lines)


def _offline_fingerprint(phrasings: tuple[str, ...]) -> str:
    """Hash of the phrasings, written as the code held them before they became a file, so
    the default template keeps the cache keys of existing workspaces."""
    return _sha256("\n".join(p.replace(PLACEHOLDER, "{name}") for p in phrasings).encode())


def load_template(path: Path) -> str:
    """The prompt template's text, checked for the {class_name} placeholder."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"prompt template {path}: cannot be read ({exc.strerror})") from None
    if PLACEHOLDER not in text:
        raise ValueError(f"prompt template {path}: has no {PLACEHOLDER} placeholder")
    return text


def render_prompt(template: str, class_name: str) -> str:
    """Fill the placeholder by plain replacement, so other braces in a user's template stay as written."""
    return template.replace(PLACEHOLDER, readable_name(class_name)).strip()


def read_published(path: Path) -> dict[str, list[str]]:
    """Published descriptions: class name -> its non-empty description_* texts, in column order."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"published descriptions {path}: cannot be read as CSV ({exc})") from None
    text_columns = [column for column in frame.columns if str(column).startswith("description_")]
    if "name" not in frame.columns or not text_columns:
        raise ValueError(
            f"published descriptions {path}: needs a 'name' column and description_1, description_2, ... "
            f"columns; found {list(frame.columns)}"
        )
    names = frame["name"].str.strip()
    repeated = names[names.duplicated()]
    if len(repeated):
        raise ValueError(f"published descriptions {path}: name {repeated.iloc[0]!r} repeated on line {repeated.index[0] + 2}")
    return {
        name: [text.strip() for text in texts if text.strip()]
        for name, texts in zip(names, frame[text_columns].itertuples(index=False))
    }


def _class_rows(classes: pd.DataFrame) -> list[tuple[str, str]]:
    """(class name, user description or "") per row, checked for empty and repeated names."""
    if "class_name" not in classes.columns:
        raise ValueError(f"classes table: no 'class_name' column (columns: {list(classes.columns)})")
    if classes.empty:
        raise ValueError("classes table: no classes")
    user = classes["description"] if "description" in classes.columns else pd.Series([None] * len(classes))
    rows: list[tuple[str, str]] = []
    seen: set[str] = set()
    for row, (name, text) in enumerate(zip(classes["class_name"], user), start=1):
        name = "" if pd.isna(name) else str(name).strip()
        if not name:
            raise ValueError(f"classes table row {row}: empty class_name")
        if name in seen:
            raise ValueError(f"classes table row {row}: class_name {name!r} repeated")
        seen.add(name)
        rows.append((name, "" if pd.isna(text) else " ".join(str(text).split())))
    return rows


def _generate(names: list[str], settings: DescriptionSettings, cache_dir: Path) -> dict[str, tuple[list[str], str]]:
    mode, key, why = _resolve_mode(settings)
    if mode == "offline":
        log.info("descriptions: using the offline writer for %d classes because %s", len(names), why)
        phrasings = load_offline_template(settings.offline_template)
        return {name: (offline_descriptions(name, settings.n_descriptions, phrasings), "offline") for name in names}
    if key is None:
        raise DescriptionError(
            f"mode 'llm' needs an API key but {why} "
            "(a local server that ignores keys still needs a placeholder value)"
        )
    texts = _llm_descriptions(names, settings, key, cache_dir)
    return {name: (texts[name], f"llm:{settings.model}") for name in names}


def _resolve_mode(settings: DescriptionSettings) -> tuple[str, str | None, str]:
    """("llm" | "offline", the API key or None, why there is no key / why offline)."""
    if settings.mode == "offline":
        return "offline", None, "mode 'offline' was requested"
    key, why = _api_key(settings)
    if key is None and settings.mode == "auto":
        other = "" if settings.secret_block else " (or the secret_block setting)"
        return "offline", None, (
            f"no API key was found ({why}); set ${settings.api_key_env}{other} to describe classes with an LLM"
        )
    return "llm", key, why


def _api_key(settings: DescriptionSettings) -> tuple[str | None, str]:
    """The key from the environment, else from the Prefect Secret block; or None and the reason."""
    key = os.environ.get(settings.api_key_env, "").strip()
    if key:
        return key, ""
    why = f"${settings.api_key_env} is not set"
    if settings.secret_block is None:
        return None, why
    try:
        from prefect.blocks.system import Secret

        key = str(Secret.load(settings.secret_block).get()).strip()
    except Exception as exc:  # noqa: BLE001 - a block that cannot be loaded, for any reason, means "no key"
        return None, f"{why} and Prefect Secret block {settings.secret_block!r} could not be loaded ({type(exc).__name__})"
    if not key:
        return None, f"{why} and Prefect Secret block {settings.secret_block!r} is empty"
    return key, ""


def _llm_fields(settings: DescriptionSettings, template: str) -> dict[str, Any]:
    """What shapes an LLM answer; the server address is left out so a mirror shares the cache."""
    return {
        "template_sha256": _sha256(template.encode()),
        "model": settings.model,
        "temperature": settings.temperature,
        "n_descriptions": settings.n_descriptions,
    }


def _llm_descriptions(names: list[str], settings: DescriptionSettings, key: str, cache_dir: Path) -> dict[str, list[str]]:
    """Cached answers, plus `concurrency` parallel requests for the rest; all or DescriptionError."""
    template = load_template(settings.template)
    fields = _llm_fields(settings, template)
    results: dict[str, list[str]] = {}
    todo: dict[str, Path] = {}
    for name in names:
        path = _cache_file(cache_dir, name, fields)
        cached = _read_cached(path, settings.n_descriptions)
        if cached is None:
            todo[name] = path
        else:
            results[name] = cached
    log.info("descriptions: %d classes cached in %s, %d to ask %s", len(results), cache_dir, len(todo), settings.model)
    if not todo:
        return results

    failures: dict[str, str] = {}
    llm = ChatLLM(
        api_key=key,
        base_url=settings.base_url,
        model=settings.model,
        temperature=settings.temperature,
        timeout_s=settings.timeout_s,
        retry=RetryPolicy(max_retries=settings.max_retries, backoff_s=settings.backoff_s),
    )
    with llm, ThreadPoolExecutor(settings.concurrency, thread_name_prefix="describe") as pool:
        futures = {
            pool.submit(_describe_one, llm, render_prompt(template, name), name, path, fields): name
            for name, path in todo.items()
        }
        for future in as_completed(futures):
            name = futures[future]
            try:
                results[name] = future.result()
            except (CancelledError, LLMCallAbandoned):
                continue
            except LLMCallError as exc:
                failures[name] = str(exc)
                # One class failing for good usually means the server is down or refuses us:
                # stop early rather than spend every other class's retries too.
                llm.stop()
                for other in futures:
                    other.cancel()
    if failures:
        unfinished = len(todo) - len(failures) - sum(name in results for name in todo)
        listed = "; ".join(f"{name!r}: {reason}" for name, reason in failures.items())
        raise DescriptionError(
            f"LLM descriptions failed for {len(failures)} class(es): {listed}. {unfinished} other class(es) "
            f"were not finished. Answers received so far are cached in {cache_dir}; rerun to resume."
        )
    return results


def _describe_one(llm: ChatLLM, prompt: str, name: str, path: Path, fields: dict[str, Any]) -> list[str]:
    texts = llm.complete(prompt, fields["n_descriptions"])
    catalog.write_json({"class_name": name, **fields, "descriptions": texts}, path)
    return texts


def _cache_file(cache_dir: Path, class_name: str, fields: dict[str, Any]) -> Path:
    """One JSON file per (class, answer-shaping fields); a readable prefix helps a person browsing."""
    digest = _sha256(json.dumps({"class_name": class_name, **fields}, sort_keys=True).encode())
    slug = re.sub(r"[^A-Za-z0-9]+", "-", class_name).strip("-")[:40] or "class"
    return cache_dir / f"{slug}-{digest[:16]}.json"


def _read_cached(path: Path, n: int) -> list[str] | None:
    """The cached texts, or None when absent or unusable (then the class is asked again)."""
    if not path.exists():
        return None
    try:
        texts = json.loads(path.read_text(encoding="utf-8"))["descriptions"]
    except (OSError, ValueError, KeyError, TypeError):
        texts = None
    if isinstance(texts, list) and len(texts) == n and all(isinstance(t, str) and t for t in texts):
        return texts
    log.warning("descriptions: ignoring unusable cache entry %s", path)
    return None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_descriptions(workspace: Path, key: str, classes: str, settings: dict[str, Any], fingerprint: dict[str, Any]) -> None:
    """Descriptions stage. `fingerprint` (settings.cache_fields()) only feeds the cache key:
    it holds the template's content hash and the resolved LLM/offline mode."""
    table = generate_descriptions(
        read_classes(classes), DescriptionSettings(**settings), catalog.stage_dir(workspace, "descriptions") / "per-class"
    )
    catalog.write_table(table, catalog.stage_output(workspace, "descriptions", key), catalog.DESCRIPTIONS)
    # what wrote them (mode, template and writer hashes; never the key), for the report's provenance
    catalog.write_json(fingerprint, catalog.stage_output(workspace, "descriptions", key, ".settings.json"))
