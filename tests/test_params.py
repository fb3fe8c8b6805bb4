"""`cscf run`'s model options as they reach training: what each sets, and that the defaults
set nothing (the training keys of a default run stay as they were)."""

from __future__ import annotations

import pytest

from cscf_model import load_config
from flows.cli import parser, pipeline_params


def overrides(*argv: str) -> dict:
    return pipeline_params(parser().parse_args(["run", *argv])).model_overrides()


def test_defaults_override_only_top_k() -> None:
    assert overrides() == {"top_k": 3}


def test_seen_budget_and_prior_fusion_reach_the_model_config() -> None:
    got = overrides("--calibration", "seen-budget", "--gate-mix", "prior", "--top-k", "5")
    assert got == {"top_k": 5, "calibration_criterion": "mean", "gate_mix": "prior"}
    config = load_config("CSCF").replace(**got)
    assert (config.gate_mix, config.calibration_criterion, config.calibration_max_seen_drop) == ("prior", "mean", 3.0)


def test_an_unknown_choice_is_refused_by_the_parser() -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "--gate-mix", "average"])
