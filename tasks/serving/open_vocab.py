"""Classes chosen at prediction time (`cscf predict --classes`), including ones the model
never trained on: CSCF scores a class by the cosine between a sample's mapped features and
the class's semantic vector, so a new class needs only a vector, made as in training.

New classes are described with the description settings recorded in the model (a
`description` column of the classes file wins, as in training) and embedded with the
recorded encoder; the vectors are cached under the workspace, keyed by everything that
made them. They are unseen by every modality.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch

from tasks.store import catalog
from tasks.semantics.descriptions import DescriptionSettings, generate_descriptions
from tasks.store.inputs import read_classes
from tasks.store.model_file import TrainedModel, with_classes
from tasks.encoders.text_encoders import build_text_encoder, embed_descriptions

log = logging.getLogger("cscf.predict")

STAGE = "predict_classes"  # workspace folder of the cached class vectors


def model_over_classes(trained: TrainedModel, classes_csv: Path | None, workspace: Path) -> TrainedModel:
    """The model over the classes of `classes_csv` (default: the model's own classes)."""
    if classes_csv is None:
        return trained
    classes = read_classes(classes_csv)
    names = classes["class_name"].tolist()
    new = classes[~classes["class_name"].isin(trained.class_names)]
    vectors = class_vectors(trained, new, Path(workspace)) if len(new) else torch.zeros(0, trained.model.class_emb.shape[1])
    if len(new):
        log.info("open vocabulary: %d class(es) the model never trained on, unseen by every modality: %s",
                 len(new), new["class_name"].tolist()[:10])
    return with_classes(trained, names, vectors)


def class_vectors(trained: TrainedModel, classes: pd.DataFrame, workspace: Path) -> torch.Tensor:
    """Semantic vectors of `classes` (class_name[, description]) made as the model's were; cached."""
    record, encoder = trained.meta["descriptions"], trained.meta["class_embeddings"]["encoder"]
    rows = classes[[c for c in ("class_name", "description") if c in classes.columns]].to_dict("records")
    key = hashlib.sha256(json.dumps({"descriptions": record, "encoder": encoder, "classes": rows},
                                    sort_keys=True).encode()).hexdigest()[:20]
    path = catalog.stage_output(workspace, STAGE, key)
    if not path.exists():
        folder = catalog.stage_dir(workspace, STAGE)
        settings = _settings(record, folder / f"{key}.templates")
        table = generate_descriptions(classes, settings, folder / "per-class").to_pandas()
        texts = [table.loc[table["class_name"] == n, "description"].tolist() for n in classes["class_name"]]
        vectors = embed_descriptions(build_text_encoder(encoder), texts)
        catalog.write_table(pa.table({"class_name": classes["class_name"].tolist(), "vector": list(vectors),
                                              "encoder": [encoder] * len(vectors)}), path, catalog.CLASS_EMBEDDINGS)
    table = catalog.read_table(path, catalog.CLASS_EMBEDDINGS)
    return torch.tensor(np.stack(table["vector"].to_numpy(zero_copy_only=False)), dtype=torch.float32)


def _settings(record: dict, folder: Path) -> DescriptionSettings:
    """DescriptionSettings that reproduce the recorded ones: the template texts become files again."""
    folder.mkdir(parents=True, exist_ok=True)
    offline = catalog.write_text("\n".join(record["offline_template"]) + "\n", folder / "offline.txt")
    fields = {"mode": record["mode"], "n_descriptions": record["n_descriptions"], "offline_template": offline}
    if record["mode"] == "llm":
        fields |= {"template": catalog.write_text(record["llm_template"], folder / "llm.txt"),
                   "model": record["model"], "temperature": record["temperature"]}
    return DescriptionSettings(**fields)
