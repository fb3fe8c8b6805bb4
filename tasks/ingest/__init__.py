"""Stages that bring features in: extraction from media (extract, media), a user's long-form
Parquet (features), published feature sets (published_features) and the embedded default
dataset (default_dataset).

May import: tasks.store, tasks.encoders.
"""
