"""The data layer, lowest in the house: every dataset's schema and path (catalog), cache keys
and locks (caching), the DuckDB views (query), provenance, progress bars, the model folder
(model_file, with the schema of its model.json in model_json) and the shared checks of user
inputs (inputs).

May import: cscf_model and third-party packages only; nothing else of tasks/.
"""
