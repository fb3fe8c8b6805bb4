"""data/examples/make_pydocs.py: Python API docs written as a text-aligned two-view CONTRACTS dataset."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from data.examples import make_pydocs
from tasks.ingest.features import read_features, validate_features
from tasks.store.inputs import read_classes
from tasks.encoders.text_encoders import build_text_encoder

SMALL = ("logging", "inspect", "difflib")
PER_CLASS = 25


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> make_pydocs.PydocsBuild:
    return make_pydocs.make_pydocs(tmp_path_factory.mktemp("pydocs"), modules=SMALL, per_class=PER_CLASS)


def _view(features: Path, modality: str) -> pd.DataFrame:
    table = pq.read_table(features).to_pandas()
    return table[table["modality"] == modality].set_index("sample_id")


def _resolve(sample_id: str) -> object:
    """The function a qualified name such as logging.handlers.RotatingFileHandler.emit names."""
    parts = sample_id.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = inspect.getattr_static(obj, attr)
        return inspect.unwrap(getattr(obj, "__func__", obj))
    raise LookupError(sample_id)


def test_output_passes_the_features_stage_validation(built: make_pydocs.PydocsBuild) -> None:
    classes = read_classes(built.classes)
    assert classes["class_name"].tolist() == list(SMALL)
    good, rejected = validate_features(read_features(built.features), set(SMALL), str(built.features))
    assert rejected.num_rows == 0
    assert good.num_rows == 3 * sum(built.counts.values())  # doc, code and name
    assert "split" not in pq.read_table(built.features).column_names  # the project makes the split


def test_each_class_is_capped_and_every_sample_has_both_views(built: make_pydocs.PydocsBuild) -> None:
    assert set(built.counts) == set(SMALL)
    assert built.counts["logging"] == built.counts["inspect"] == PER_CLASS  # both have more
    assert 0 < built.counts["difflib"] <= PER_CLASS
    doc, code = _view(built.features, "doc"), _view(built.features, "code")
    assert doc.index.is_unique and set(doc.index) == set(code.index)
    assert (doc["class_name"] == code.loc[doc.index, "class_name"]).all()
    for sample_id, class_name in doc["class_name"].items():
        assert sample_id.startswith(class_name + ".")


def test_doc_view_is_the_minilm_embedding_of_the_docstring(built: make_pydocs.PydocsBuild) -> None:
    doc = _view(built.features, "doc")
    vectors = np.stack(doc["vector"].to_numpy())
    assert vectors.shape[1] == 384
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    picked = doc.index[::20]
    texts = [inspect.cleandoc(_resolve(sample_id).__doc__)[:1000] for sample_id in picked]
    expected = build_text_encoder("minilm").encode(texts)
    np.testing.assert_allclose(np.stack(doc.loc[picked, "vector"].to_numpy()), expected, atol=1e-4)


def test_name_view_is_the_minilm_embedding_of_the_name_without_its_module(built: make_pydocs.PydocsBuild) -> None:
    name = _view(built.features, "name")
    assert set(name.index) == set(_view(built.features, "doc").index)
    picked = name.index[::20]
    words = [" ".join(p.lower() for p in make_pydocs.IDENTIFIER_PIECE.findall(_resolve(s).__qualname__)) for s in picked]
    assert not any(module in w for w in words for module in ("logging", "inspect"))  # the label is not in the view
    expected = build_text_encoder("minilm").encode(words)
    np.testing.assert_allclose(np.stack(name.loc[picked, "vector"].to_numpy()), expected, atol=1e-4)


def test_code_view_is_standardised_svd_of_the_subset(built: make_pydocs.PydocsBuild) -> None:
    vectors = np.stack(_view(built.features, "code")["vector"].to_numpy())
    n = sum(built.counts.values())
    assert vectors.shape == (n, min(128, n - 1))  # fewer items than 128: the SVD is narrower
    np.testing.assert_allclose(vectors.mean(axis=0), 0.0, atol=1e-4)
    np.testing.assert_allclose(vectors.std(axis=0), 1.0, atol=1e-3)


def test_descriptions_are_the_modules_own_docstrings(built: make_pydocs.PydocsBuild) -> None:
    for name, description in read_classes(built.classes)[["class_name", "description"]].itertuples(index=False):
        prefix = f"Python module {name}: "
        assert description.startswith(prefix)
        text = description[len(prefix):]
        assert len(text) >= 30
        assert text in " ".join(inspect.getdoc(importlib.import_module(name)).split())


def test_cosine_rule_beats_chance_on_the_written_files(built: make_pydocs.PydocsBuild) -> None:
    scores = make_pydocs.summarise(built.classes, built.features)
    assert scores["chance"] == pytest.approx(1 / 3)
    assert scores["cosine_rule"] > 0.6  # 0.83 here: docstrings sit near their module's description
    assert scores["code_logreg_5fold"] > scores["chance"]  # 0.45 from 71 items: code alone is harder


def test_cosine_rule_accuracy_counts_argmax_hits() -> None:
    classes = np.array([[2.0, 0.0], [0.0, 0.5]])  # unnormalised on purpose
    docs = np.array([[1.0, 0.1], [0.1, 3.0], [0.9, 1.0], [5.0, 4.0]])
    assert make_pydocs.cosine_rule_accuracy(docs, np.array([0, 1, 0, 1]), classes) == pytest.approx(0.5)


class _Sample:
    def fetchHTTPResponse_now(self, retries: int) -> int:
        """Quokkadocword appears in this docstring only."""

        def inner() -> None:
            """Wombatdocword, in a nested docstring."""

        # Numbatcommentword, in a comment.
        return retries + len("literal words")


def test_code_tokens_drop_docstrings_comments_and_literals() -> None:
    tokens = make_pydocs.code_tokens(_Sample.fetchHTTPResponse_now)  # indented source: dedented first
    assert tokens[:6] == ["def", "fetch", "http", "response", "now", "self"]
    assert {"inner", "retries", "return", "len", "int"} <= set(tokens)
    for word in ("quokkadocword", "wombatdocword", "numbatcommentword", "literal", "words"):
        assert word not in tokens
    assert all(re.fullmatch(r"[a-z]+", token) for token in tokens)


def test_output_is_deterministic(built: make_pydocs.PydocsBuild, tmp_path: Path) -> None:
    again = make_pydocs.make_pydocs(tmp_path, modules=SMALL, per_class=PER_CLASS)
    assert again.classes.read_bytes() == built.classes.read_bytes()
    assert pq.read_table(again.features).equals(pq.read_table(built.features))


@pytest.mark.parametrize(
    "modules, message",
    [
        (("logging", "logging.handlers"), "logging.handlers lies inside logging"),
        (("inspect", "inspect"), "listed twice"),
        (("calendar",), "module calendar: first docstring paragraph"),
        (("math",), "module math: no public Python function"),  # all of it is C
    ],
)
def test_bad_module_lists_are_refused_by_name(tmp_path: Path, modules, message) -> None:
    with pytest.raises(ValueError, match=message):
        make_pydocs.make_pydocs(tmp_path, modules=modules)
    assert not any(tmp_path.iterdir())


def test_command_line_wants_exactly_one_out_dir(capsys: pytest.CaptureFixture[str]) -> None:
    assert make_pydocs.main([]) == 2
    assert "usage: make_pydocs.py OUT_DIR" in capsys.readouterr().err


SMALL_B = ("tarfile", "pdb", "sortedcontainers")  # from collection b; quick to import


@pytest.fixture(scope="module")
def built_b(tmp_path_factory: pytest.TempPathFactory) -> make_pydocs.PydocsBuild:
    return make_pydocs.make_pydocs(
        tmp_path_factory.mktemp("pydocs_b"), modules=SMALL_B, per_class=PER_CLASS, views=make_pydocs.ALL_VIEWS
    )


def test_collection_b_shares_no_module_with_collection_a() -> None:
    (a, a_views), (b, b_views) = make_pydocs.COLLECTIONS["a"], make_pydocs.COLLECTIONS["b"]
    assert a == make_pydocs.MODULES and a_views == ("doc", "code", "name")  # the default dataset
    assert b_views == ("doc", "code", "name", "sig") and 15 <= len(b) <= 25
    assert set(SMALL_B) <= set(b)
    assert not [(x, y) for x in a for y in b if x == y or x.startswith(y + ".") or y.startswith(x + ".")]


def test_four_view_output_passes_validation_with_every_view_per_sample(built_b: make_pydocs.PydocsBuild) -> None:
    good, rejected = validate_features(read_features(built_b.features), set(SMALL_B), str(built_b.features))
    assert rejected.num_rows == 0
    assert good.num_rows == 4 * sum(built_b.counts.values())
    table = pq.read_table(built_b.features).to_pandas()
    assert list(dict.fromkeys(table["modality"])) == ["doc", "code", "name", "sig"]
    assert (table.groupby("sample_id")["modality"].nunique() == 4).all()


def test_sig_view_is_the_minilm_embedding_of_the_parameter_words(built_b: make_pydocs.PydocsBuild) -> None:
    sig = _view(built_b.features, "sig")
    picked = sig.index[::10]
    words = []
    for sample_id in picked:
        names = [p for p in inspect.signature(_resolve(sample_id)).parameters if p not in ("self", "cls")]
        words.append(" ".join(w.lower() for p in names for w in make_pydocs.IDENTIFIER_PIECE.findall(p)))
    assert any(words) and all(re.fullmatch(r"[a-z ]*", w) for w in words)
    expected = build_text_encoder("minilm").encode(words)
    np.testing.assert_allclose(np.stack(sig.loc[picked, "vector"].to_numpy()), expected, atol=1e-4)


def test_summarise_scores_every_view_of_the_four_view_files(built_b: make_pydocs.PydocsBuild) -> None:
    scores = make_pydocs.summarise(built_b.classes, built_b.features)
    assert [k for k in scores if k.endswith("_logreg_5fold")] == [f"{v}_logreg_5fold" for v in make_pydocs.ALL_VIEWS]
    assert scores["doc_logreg_5fold"] > scores["chance"] and scores["cosine_rule"] > scores["chance"]


def _varied(self, first_arg, /, maxIter: int = 1, *more_args, only_kw: bool = False, **extra_kwargs) -> None:
    cls = local_name = None  # locals are not parameters, and `cls` here is not one either
    del cls, local_name


def test_parameter_words_keep_every_parameter_kind_but_self_and_cls() -> None:
    assert make_pydocs.parameter_words(_varied) == "first arg max iter more args only kw extra kwargs"
    assert make_pydocs.parameter_words(_Sample.fetchHTTPResponse_now) == "retries"
    assert make_pydocs.parameter_words(lambda: None) == ""


def test_unknown_views_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="views \\['doc', 'pixels'\\]"):
        make_pydocs.make_pydocs(tmp_path, modules=SMALL, views=("doc", "pixels"))
    assert not any(tmp_path.iterdir())


def test_command_line_refuses_an_unknown_collection(capsys: pytest.CaptureFixture[str]) -> None:
    assert make_pydocs.main(["out", "--collection", "c"]) == 2
    assert "usage: make_pydocs.py OUT_DIR [--collection a|b]" in capsys.readouterr().err
