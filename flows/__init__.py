"""Prefect flows that only wire stages (tasks/stages.py) and the `cscf` command line.

pipeline.py: the `cscf` flow; stage_flows.py: one flow per stage, sharing its cache;
predict.py: `cscf-predict`; benchmark.py: several seeds and the baselines; cli.py and
runtime.py: the command line and the Prefect runtime it sets up.
"""
