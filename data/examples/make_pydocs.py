"""A real dataset whose first view lives in the same text space as the class semantics.

Items are the public, Python-source functions and methods of a fixed list of installed
modules (stdlib and packages in the project's environment); an item's class is the
module or package it was written in, e.g. `logging.Logger.info` is a "logging" item.
Two fixed lists, with no module in common, give two datasets (`--collection`):

- `a` (the default): 23 modules (MODULES), three views: doc, code and name.
- `b`: 22 other modules (MODULES_B), four views: doc, code, name and sig.

Each item is seen through up to four views of the same function:

- `doc`: the MiniLM embedding of its docstring. Class descriptions are the first
  paragraph of each module's own docstring, embedded by the same encoder, so this
  view is text-aligned with the class semantics (as the paper assumes for CLIP/CLAP
  features) and a training-free cosine rule already beats chance.
- `code`: the identifier and keyword pieces of its source (`getLogger` -> get, logger),
  TF-IDF -> TruncatedSVD(128) -> standardised. String literals, docstrings among them,
  and comments are left out, so the two views share no prose. TF-IDF and the SVD are
  fitted on all items without their labels: unsupervised preprocessing, like fitting
  a feature extractor; it sees the code of items that end up in the test split, but
  never a label.
- `name`: the MiniLM embedding of its qualified name without the module path, split
  into words (`Logger.info` -> "logger info"): a short, weaker text-aligned view.
- `sig`: the MiniLM embedding of its parameter names, split into words, `self` and
  `cls` left out (`(self, max_iter, **kwargs)` -> "max iter kwargs"); a function with
  no other parameter gets the embedding of the empty text.

Measured on the written files (`summarise`; 5-fold logistic regression per view, the
training-free cosine rule for doc), as printed by
`.venv/bin/python data/examples/make_pydocs.py OUT_DIR [--collection b]`:
  a: 23 classes, 2259 items, chance 0.043; cosine rule (doc) 0.601;
     logistic regression doc 0.809, code 0.793, name 0.631.
  b: 22 classes, 1868 items, chance 0.045; cosine rule (doc) 0.608;
     logistic regression doc 0.824, code 0.767, name 0.600, sig 0.541.

Everything comes from the local environment (no network); the output is deterministic
for a given environment, but other library versions give other items.

Writes, in the bring-your-own-features format (CONTRACTS section 1):
  OUT_DIR/classes.csv        class_name (module name) and description (its docstring)
  OUT_DIR/features.parquet   long form, one modality per view, no split column

Usage: .venv/bin/python data/examples/make_pydocs.py OUT_DIR [--collection a|b]
"""

from __future__ import annotations

import ast
import importlib
import inspect
import io
import pkgutil
import random
import re
import sys
import textwrap
import time
import tokenize
import warnings
from collections import Counter
from pathlib import Path
from types import CodeType, FunctionType, ModuleType
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # run as a script from anywhere, not only as a module
    sys.path.insert(0, str(REPO_ROOT))

from cscf_model import calibration  # noqa: E402
from data.examples.long_form import standardise, write_dataset  # noqa: E402
from tasks.store import catalog  # noqa: E402
from tasks.store.inputs import read_classes  # noqa: E402
from tasks.encoders.text_encoders import build_text_encoder  # noqa: E402

# One class per module or package. Chosen to be semantically distinct, to have at least
# 40 usable items each, and to open with an informative docstring paragraph; none of
# them opens a window, starts a server or takes long to import.
MODULES = (
    "logging",
    "email",
    "asyncio",
    "unittest",
    "importlib",
    "inspect",
    "numpy.polynomial",
    "torch.optim",
    "sklearn.metrics",
    "sklearn.cluster",
    "sklearn.preprocessing",
    "sklearn.datasets",
    "PIL",
    "matplotlib.colors",
    "jinja2",
    "markdown",
    "tornado",
    "click",
    "rich",
    "sympy.solvers",
    "networkx.generators",
    "h5py",
    "sqlalchemy.orm",
)
# Collection b, chosen the same way and sharing no module with MODULES (nor nested in one).
MODULES_B = (
    "tarfile",
    "mailbox",
    "pdb",
    "pydoc",
    "scipy.optimize",
    "scipy.signal",
    "scipy.sparse",
    "scipy.spatial",
    "torch.distributions",
    "torch.autograd",
    "sympy.geometry",
    "sympy.integrals",
    "requests",
    "librosa",
    "typer",
    "pyparsing",
    "sortedcontainers",
    "numpy.ma",
    "matplotlib.pyplot",
    "networkx.readwrite",
    "sklearn.ensemble",
    "jsonschema",
)
VIEWS = ("doc", "code", "name")
ALL_VIEWS = VIEWS + ("sig",)
COLLECTIONS = {"a": (MODULES, VIEWS), "b": (MODULES_B, ALL_VIEWS)}
USAGE = "usage: make_pydocs.py OUT_DIR [--collection a|b]"
PER_CLASS = 120
MIN_DOC_CHARS = 40  # shorter docstrings ("Return x.") say too little to embed
DOC_CHARS = 1000  # MiniLM reads 256 word pieces; the rest would be cut anyway
MIN_DESCRIPTION_CHARS = 30
SVD_WIDTH = 128
# Submodules never imported: test suites, entry points (rich.__main__ prints a demo),
# GUI bindings and reports.
SKIPPED_PARTS = frozenset({"tests", "test", "testing", "conftest", "__main__"})
SKIPPED_MODULES = frozenset({"PIL.report", "PIL.ImageTk", "PIL.ImageQt"})  # PIL.report prints on import
# One identifier piece: an acronym (HTTP in HTTPServer) or a word (server, Server).
IDENTIFIER_PIECE = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+")


class Item(NamedTuple):
    """One function or method: its class, its cleaned docstring, its code tokens, its name's and parameters' words."""

    sample_id: str
    class_name: str
    doc: str
    tokens: list[str]
    name: str
    params: str


class PydocsBuild(NamedTuple):
    """What make_pydocs wrote, and how many items it left out, by reason."""

    classes: Path
    features: Path
    counts: dict[str, int]
    skipped: Counter[str]


def _quiet_import(name: str) -> ModuleType:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return importlib.import_module(name)


def module_description(name: str) -> str:
    """The class description: the first paragraph of the module's own docstring."""
    doc = inspect.getdoc(_quiet_import(name)) or ""
    first = " ".join(re.split(r"\n\s*\n", doc.strip())[0].split())
    if len(first) < MIN_DESCRIPTION_CHARS:
        raise ValueError(
            f"module {name}: first docstring paragraph {first!r} is shorter than "
            f"{MIN_DESCRIPTION_CHARS} characters, too little to describe the class"
        )
    return f"Python module {name}: {first}"


def _words(identifier: str) -> list[str]:
    return [piece.lower() for piece in IDENTIFIER_PIECE.findall(identifier)]


def code_tokens(func: FunctionType) -> list[str]:
    """Lower-cased identifier and keyword pieces of a function's source.

    Only name tokens count, so docstrings (string literals like any other) and comments
    never reach the code view. Raises OSError or TypeError when the source is not
    available and SyntaxError when it does not parse on its own (a method whose
    multi-line string breaks its indentation cannot be dedented).
    """
    source = textwrap.dedent(inspect.getsource(func))
    ast.parse(source)
    names = (tok.string for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.NAME)
    return [word for name in names for word in _words(name)]


def parameter_words(func: FunctionType) -> str:
    """The words of a function's parameter names, `self` and `cls` left out, in the order declared.

    Read from the code object, which every Python function has, so no item is ever lost
    to this view. It lists positional, then keyword-only parameters, then *args, then
    **kwargs; *args goes back between the first two.
    """
    code = func.__code__
    named = code.co_argcount + code.co_kwonlyargcount
    names = list(code.co_varnames[:named])
    starred = iter(code.co_varnames[named:])
    if code.co_flags & inspect.CO_VARARGS:
        names.insert(code.co_argcount, next(starred))
    if code.co_flags & inspect.CO_VARKEYWORDS:
        names.append(next(starred))
    return " ".join(word for name in names if name not in ("self", "cls") for word in _words(name))


def _submodules(package: ModuleType, skipped: Counter[str]) -> Iterator[ModuleType]:
    """The package and, recursively, every submodule that imports here."""
    yield package
    for info in pkgutil.iter_modules(getattr(package, "__path__", []), package.__name__ + "."):
        if info.name in SKIPPED_MODULES or SKIPPED_PARTS.intersection(info.name.split(".")):
            continue
        try:
            module = _quiet_import(info.name)
        except Exception:  # an optional dependency is missing, e.g. tornado.curl_httpclient needs pycurl
            skipped["submodule does not import"] += 1
            continue
        yield from _submodules(module, skipped)


def _public_functions(module: ModuleType) -> Iterator[tuple[str, object]]:
    """(qualified name, object) for public module attributes and public methods of public classes."""
    for name, value in sorted(vars(module).items()):
        if name.startswith("_"):
            continue
        if not inspect.isclass(value):
            yield f"{module.__name__}.{name}", value
            continue
        for attr, member in sorted(vars(value).items()):
            if not attr.startswith("_"):
                function = member.__func__ if isinstance(member, (staticmethod, classmethod)) else member
                yield f"{module.__name__}.{name}.{attr}", function


def _within(module_name: str, package: str) -> bool:
    return module_name == package or module_name.startswith(package + ".")


def _collect(class_name: str, package: Sequence[ModuleType], skipped: Counter[str]) -> list[Item]:
    """Every usable item written in `class_name`, found in its `package` modules, sorted by sample_id.

    A function reached under several names (re-exports, aliases) is one item. Its name
    is the one reached through the package that defines it (not a module that merely
    imports it), preferring public modules, then the shortest.
    """
    named: dict[CodeType, tuple[tuple[bool, bool, int, str], str, FunctionType]] = {}
    for module in package:
        private = any(part.startswith("_") for part in module.__name__.split("."))
        for path, obj in _public_functions(module):
            if not inspect.isfunction(obj):
                continue
            func = inspect.unwrap(obj)  # decorators share one wrapper code object
            if not inspect.isfunction(func) or not _within(func.__module__ or "", class_name):
                continue
            rank = (not _within(func.__module__, module.__name__), private, len(path), path)
            known = named.get(func.__code__)
            if known is not None:
                skipped["same function under another name"] += 1
                if known[0] <= rank:
                    continue
            named[func.__code__] = (rank, path, func)
    items = []
    for _, path, func in sorted(named.values(), key=lambda entry: entry[1]):
        doc = inspect.cleandoc(func.__doc__ or "")
        if len(doc) < MIN_DOC_CHARS:
            skipped[f"docstring under {MIN_DOC_CHARS} characters"] += 1
            continue
        try:
            tokens = code_tokens(func)
        except (OSError, TypeError):
            skipped["no source"] += 1
            continue
        except SyntaxError:
            skipped["source does not parse"] += 1
            continue
        name = " ".join(_words(func.__qualname__.replace("<locals>", "")))
        items.append(Item(path, class_name, doc[:DOC_CHARS], tokens, name, parameter_words(func)))
    return items


def code_view(token_lists: Sequence[list[str]], seed: int) -> np.ndarray:
    """TF-IDF of the code pieces -> TruncatedSVD -> standardised; at most SVD_WIDTH columns."""
    tfidf = TfidfVectorizer(token_pattern=r"\S+", lowercase=False, sublinear_tf=True, min_df=2)
    counts = tfidf.fit_transform(" ".join(tokens) for tokens in token_lists)
    width = min(SVD_WIDTH, counts.shape[0] - 1, counts.shape[1] - 1)
    return standardise(TruncatedSVD(n_components=width, random_state=seed).fit_transform(counts))


def make_pydocs(
    out_dir: Path,
    modules: Sequence[str] = MODULES,
    per_class: int = PER_CLASS,
    seed: int = 0,
    views: Sequence[str] = VIEWS,
) -> PydocsBuild:
    """Write classes.csv and features.parquet for the given modules and views, at most `per_class` items each."""
    unknown = [view for view in views if view not in ALL_VIEWS]
    if unknown or not views:
        raise ValueError(f"views {list(views)}: pick one or more of {', '.join(ALL_VIEWS)}")
    if len(set(modules)) != len(modules):
        raise ValueError(f"modules listed twice: {sorted(m for m, n in Counter(modules).items() if n > 1)}")
    nested = [(a, b) for a in modules for b in modules if b.startswith(a + ".")]
    if nested:
        raise ValueError(f"module {nested[0][1]} lies inside {nested[0][0]}: classes must not overlap")
    descriptions = {name: module_description(name) for name in modules}
    # Imports can replace functions of other modules (importing torch swaps in its own
    # inspect.getfile), so everything is imported before anything is collected: the
    # items then do not depend on what the process imported earlier.
    encoder = build_text_encoder("minilm")
    skipped: Counter[str] = Counter()
    packages = {name: list(_submodules(_quiet_import(name), skipped)) for name in modules}
    seen_docs: set[str] = set()
    items: list[Item] = []
    for name, package in packages.items():
        fresh = []
        for item in _collect(name, package, skipped):
            if item.doc in seen_docs:
                skipped["docstring identical to another's"] += 1
                continue
            seen_docs.add(item.doc)
            fresh.append(item)
        if not fresh:
            raise ValueError(
                f"module {name}: no public Python function with a docstring of {MIN_DOC_CHARS}+ characters"
            )
        if len(fresh) > per_class:
            # Seeded per class, so one class's pick does not depend on the others.
            fresh = sorted(random.Random(f"{seed}/{name}").sample(fresh, per_class), key=lambda item: item.sample_id)
        items.extend(fresh)
    build_view = {
        "doc": lambda: encoder.encode([item.doc for item in items]),
        "code": lambda: code_view([item.tokens for item in items], seed),
        "name": lambda: encoder.encode([item.name for item in items]),
        "sig": lambda: encoder.encode([item.params for item in items]),
    }
    vectors = {view: build_view[view]() for view in views}
    classes, features = write_dataset(
        Path(out_dir), [item.sample_id for item in items], [item.class_name for item in items], vectors, descriptions
    )
    return PydocsBuild(classes, features, dict(Counter(item.class_name for item in items)), skipped)


def cosine_rule_accuracy(doc_vectors: np.ndarray, labels: np.ndarray, class_vectors: np.ndarray) -> float:
    """Top-1 accuracy of labelling each row with its most cosine-similar class vector, training-free.

    `labels[i]` is the row of `class_vectors` that row i of `doc_vectors` belongs to.
    """
    as_tensor = lambda a: torch.from_numpy(np.asarray(a))  # noqa: E731
    return calibration.cosine_rule_accuracy(as_tensor(doc_vectors), as_tensor(labels), as_tensor(class_vectors)) / 100


def summarise(classes_csv: Path, features: Path, seed: int = 0) -> dict[str, float]:
    """How much class information each written view carries, measured on the files themselves.

    `cosine_rule` needs no training (doc vectors against the embedded descriptions);
    `<view>_logreg_5fold` is cross-validated logistic regression on that view alone, for
    every view in the file, in the order written.
    """
    classes = read_classes(classes_csv)
    names = classes["class_name"].tolist()
    table = catalog.read_table(features).to_pandas()
    views = {m: rows.sort_values("sample_id") for m, rows in table.groupby("modality", sort=False)}
    labels = views["doc"]["class_name"].map({name: i for i, name in enumerate(names)}).to_numpy()
    class_vectors = build_text_encoder("minilm").encode(classes["description"].tolist())
    scores = {
        "chance": 1.0 / len(names),
        "cosine_rule": cosine_rule_accuracy(np.stack(views["doc"]["vector"].to_numpy()), labels, class_vectors),
    }
    for view, rows in views.items():
        logreg = LogisticRegression(max_iter=2000, random_state=seed)
        vectors = np.stack(rows["vector"].to_numpy())
        scores[f"{view}_logreg_5fold"] = float(cross_val_score(logreg, vectors, labels, cv=5).mean())
    return scores


def main(argv: list[str]) -> int:
    collection = "a"
    if len(argv) == 3 and argv[1] == "--collection":
        argv, collection = argv[:1], argv[2]
    if len(argv) != 1 or collection not in COLLECTIONS:
        print(USAGE, file=sys.stderr)
        return 2
    start = time.perf_counter()
    modules, views = COLLECTIONS[collection]
    build = make_pydocs(Path(argv[0]), modules=modules, views=views)
    scores = summarise(build.classes, build.features)
    print(f"wrote {build.classes} and {build.features}")
    print(f"{len(build.counts)} classes, {sum(build.counts.values())} items:")
    for name, count in build.counts.items():
        print(f"  {name:24s} {count:4d}")
    print("left out: " + ", ".join(f"{count} {why}" for why, count in sorted(build.skipped.items())))
    print(
        f"training-free cosine rule (doc vs descriptions): {scores['cosine_rule']:.3f} "
        f"(chance {scores['chance']:.3f})"
    )
    print("each view alone, 5-fold logistic regression: "
          + ", ".join(f"{view} {scores[f'{view}_logreg_5fold']:.3f}" for view in views))
    print(f"took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
