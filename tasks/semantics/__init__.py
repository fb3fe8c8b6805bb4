"""Stages that give every class its semantic vector: LLM-written descriptions (descriptions,
llm_client) embedded by a text encoder (embeddings).

May import: tasks.store, tasks.encoders.
"""
