"""The pipeline's stage logic, as plain functions grouped by the way data flows.

    stages.py     the one place Prefect tasks are declared (thin wrappers)
    serving/      a saved model classifying new samples
    evaluation/   Table 1 subsets, ablations, baselines, reports
    training/     the MMHCL split and the training stage
    ingest/ | semantics/   features in; class descriptions and their vectors
    encoders/     CLIP, CLAP and text encoders
    store/        schemas, paths, cache keys, the model folder, DuckDB views

Each group imports only the groups below it (ingest and semantics not each other);
tests/test_layers.py holds the house to that.
"""
