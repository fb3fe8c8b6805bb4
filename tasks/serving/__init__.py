"""A saved model at work: classifying new samples (predict), classes added by name
(open_vocab), and the cscf-predict flow's own steps.

May import: every group below it (store, encoders, ingest, semantics, training, evaluation).
"""
