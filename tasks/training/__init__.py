"""The MMHCL split (split), the protocol's tensors (mmhcl_data) and the training stage (train).

May import: tasks.store, tasks.encoders, cscf_model.
"""
