"""Class embeddings stage: class descriptions -> one semantic vector c_i per class (eq. 11)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from . import catalog
from .text_encoders import build_text_encoder, embed_descriptions


def build_class_embeddings(workspace: Path, key: str, descriptions_key: str, encoder: str) -> None:
    """Embed every class's descriptions and average them (prompt ensembling), in class order."""
    table = catalog.read_table(catalog.stage_output(workspace, "descriptions", descriptions_key), catalog.DESCRIPTIONS)
    df = table.to_pandas()
    names = list(dict.fromkeys(df["class_name"]))  # classes.csv order, as the stage wrote it
    texts = [df.loc[df["class_name"] == n, "description"].tolist() for n in names]
    vectors = embed_descriptions(build_text_encoder(encoder), texts)
    out = pa.table({"class_name": names, "vector": list(vectors), "encoder": [encoder] * len(names)})
    catalog.write_table(out, catalog.stage_output(workspace, "class_embeddings", key), catalog.CLASS_EMBEDDINGS)
