"""Class embeddings stage: class descriptions -> one semantic vector c_i per class (eq. 11)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from tasks.store import catalog
from tasks.store.inputs import InputError
from tasks.encoders.text_encoders import build_text_encoder, embed_descriptions


def build_class_embeddings(workspace: Path, key: str, descriptions_key: str, encoder: str) -> None:
    """Embed every class's descriptions and average them (prompt ensembling), in class order."""
    table = catalog.read_table(catalog.stage_output(workspace, "descriptions", descriptions_key), catalog.DESCRIPTIONS)
    df = table.to_pandas()
    names = list(dict.fromkeys(df["class_name"]))  # classes.csv order, as the stage wrote it
    texts = [df.loc[df["class_name"] == n, "description"].tolist() for n in names]
    vectors = embed_descriptions(build_text_encoder(encoder), texts)
    check_class_vectors(names, vectors, f"class embeddings by {encoder}")
    out = pa.table({"class_name": names, "vector": list(vectors), "encoder": [encoder] * len(names)})
    catalog.write_table(out, catalog.stage_output(workspace, "class_embeddings", key), catalog.CLASS_EMBEDDINGS)
    catalog.write_json({"descriptions_key": descriptions_key, "encoder": encoder},
                       catalog.stage_output(workspace, "class_embeddings", key, ".provenance.json"))


def check_class_vectors(names: list[str], vectors: np.ndarray, source: str) -> None:
    """Refuse NaN/inf or all-zero class vectors, naming the classes: cosine logits against
    them are NaN or constant, and training would go on with a class it cannot score."""
    finite = np.isfinite(vectors).all(axis=1)
    bad = [(n, "NaN or inf") for n, ok in zip(names, finite) if not ok]
    bad += [(n, "all zeros") for n, ok, v in zip(names, finite, vectors) if ok and not np.any(v)]
    if bad:
        listed = ", ".join(f"{n!r} ({why})" for n, why in bad[:5])
        raise InputError(f"{source}: {len(bad)} class vector(s) unusable: {listed}; check their descriptions")
