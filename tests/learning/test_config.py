"""Tests of the user-facing settings :class:`SystemConfig` and :class:`TrainingConfig`.

Every rejection must name the offending field: Pacemaker itself would silently ignore or misuse the value.
"""

from __future__ import annotations

import math
import re

import pydantic
import pytest

from aiida_autopipec.config import SystemConfig, TrainingConfig, validate_element_symbols


def raises_naming(field: str, detail: str = ""):
    """``pytest.raises`` for a ValidationError whose message names ``field`` (and contains ``detail``)."""
    pattern = re.escape(field) + (r"[\s\S]*" + re.escape(detail) if detail else "")
    return pytest.raises(pydantic.ValidationError, match=pattern)


# -- defaults ------------------------------------------------------------------------------------------------


def test_training_defaults():
    training = TrainingConfig()
    assert training.cutoff == 5.0
    assert training.rmse_forces_threshold == 0.05
    assert training.number_of_functions_per_element is None
    assert training.max_functions_per_element == 300
    assert training.kappa == 0.7
    assert training.test_size == 0.1
    assert training.device == "auto"
    assert training.gpu_memory_limit is None
    assert training.reference_energies == "fit"
    assert training.rmse_energy_threshold is None


def test_system_config_defaults_to_default_training():
    config = SystemConfig(elements=["Al", "Cu"])
    assert config.elements == ["Al", "Cu"]
    assert config.training == TrainingConfig()
    assert config.training.cutoff == 5.0


def test_default_training_is_not_shared_between_configs():
    first, second = SystemConfig(elements=["Al"]), SystemConfig(elements=["Al"])
    first.training.cutoff = 4.0
    assert second.training.cutoff == 5.0


# -- shorthand -----------------------------------------------------------------------------------------------


def test_shorthand_lands_in_training():
    config = SystemConfig(elements=["Fe", "C"], cutoff=4.5)
    assert config.training.cutoff == 4.5
    assert "cutoff" not in config.model_dump()
    assert config.model_dump()["training"]["cutoff"] == 4.5


def test_shorthand_merges_with_explicit_training():
    config = SystemConfig(elements=["Fe", "C"], cutoff=4.5, training={"kappa": 0.9})
    assert (config.training.cutoff, config.training.kappa) == (4.5, 0.9)
    config = SystemConfig(elements=["Fe", "C"], cutoff=4.5, training=TrainingConfig(kappa=0.9))
    assert (config.training.cutoff, config.training.kappa) == (4.5, 0.9)


@pytest.mark.parametrize("training", [{"cutoff": 4.0}, TrainingConfig(cutoff=4.0)], ids=["dict", "model"])
def test_field_both_at_top_level_and_in_training_is_an_error(training):
    with raises_naming("['cutoff'] given both at the top level and in 'training'"):
        SystemConfig(elements=["Fe", "C"], cutoff=4.5, training=training)


def test_shorthand_is_validated_under_its_training_name():
    with raises_naming("training.cutoff", "greater than 0"):
        SystemConfig(elements=["Fe"], cutoff=-1.0)


def test_config_round_trips_through_model_dump():
    config = SystemConfig(elements=["Al", "Cu"], cutoff=4.2, reference_energies={"Al": -3.1, "Cu": -3.6})
    assert SystemConfig.model_validate(config.model_dump()) == config
    assert SystemConfig.model_validate_json(config.model_dump_json()) == config


# -- rejected values -----------------------------------------------------------------------------------------


def test_unknown_top_level_key_is_rejected():
    with raises_naming("cutof", "Extra inputs are not permitted"):
        SystemConfig(elements=["Al"], cutof=4.0)


def test_unknown_training_key_is_rejected():
    with raises_naming("training.kapa", "Extra inputs are not permitted"):
        SystemConfig(elements=["Al"], training={"kapa": 0.5})
    with raises_naming("kapa", "Extra inputs are not permitted"):
        TrainingConfig(kapa=0.5)


@pytest.mark.parametrize("cutoff", [0.0, -2.5])
def test_non_positive_cutoff_is_rejected(cutoff):
    with raises_naming("training.cutoff", "greater than 0"):
        SystemConfig(elements=["Al"], training={"cutoff": cutoff})


def test_unknown_element_is_rejected():
    with raises_naming("elements", "unknown element symbol(s) ['Xx']"):
        SystemConfig(elements=["Al", "Xx"])
    with raises_naming("elements", "unknown element symbol(s) ['X']"):  # ASE's placeholder is no element
        SystemConfig(elements=["X"])
    with raises_naming("elements", "unknown element symbol(s) ['al']"):  # symbols are case-sensitive
        SystemConfig(elements=["al"])


def test_duplicate_elements_are_rejected():
    with raises_naming("elements", "duplicate element symbol(s) ['Al']"):
        SystemConfig(elements=["Al", "Cu", "Al"])


def test_empty_elements_are_rejected():
    with raises_naming("elements", "at least one element symbol is required"):
        SystemConfig(elements=[])


def test_missing_elements_are_rejected():
    with raises_naming("elements", "Field required"):
        SystemConfig(cutoff=4.0)


@pytest.mark.parametrize("test_size", [0, 1, -0.1, 1.5])
def test_test_size_outside_open_unit_interval_is_rejected(test_size):
    with raises_naming("training.test_size"):
        SystemConfig(elements=["Al"], test_size=test_size)


@pytest.mark.parametrize("test_size", [0.01, 0.5, 0.99])
def test_test_size_inside_unit_interval_is_accepted(test_size):
    assert SystemConfig(elements=["Al"], test_size=test_size).training.test_size == test_size


@pytest.mark.parametrize("maxiter", [0, -5])
def test_non_positive_maxiter_is_rejected(maxiter):
    with raises_naming("training.maxiter", "greater than 0"):
        SystemConfig(elements=["Al"], maxiter=maxiter)


@pytest.mark.parametrize("kappa", [-0.01, 1.01, 2])
def test_kappa_outside_unit_interval_is_rejected(kappa):
    with raises_naming("training.kappa"):
        SystemConfig(elements=["Al"], kappa=kappa)


@pytest.mark.parametrize("kappa", [0, 0.5, 1])
def test_kappa_bounds_are_accepted(kappa):
    assert SystemConfig(elements=["Al"], kappa=kappa).training.kappa == kappa


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_gpu_memory_limit_requires_gpu_device(device):
    with raises_naming("gpu_memory_limit", "only allowed together with device='gpu'"):
        SystemConfig(elements=["Al"], device=device, gpu_memory_limit=4096)


def test_gpu_memory_limit_with_gpu_device_is_accepted():
    training = SystemConfig(elements=["Al"], device="gpu", gpu_memory_limit=4096).training
    assert (training.device, training.gpu_memory_limit) == ("gpu", 4096)


def test_unknown_device_is_rejected():
    with raises_naming("training.device", "'auto', 'cpu' or 'gpu'"):
        SystemConfig(elements=["Al"], device="tpu")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_reference_energies_are_rejected(value):
    with raises_naming("training.reference_energies", "values must be finite numbers"):
        SystemConfig(elements=["Al", "Cu"], reference_energies={"Al": -3.0, "Cu": value})


def test_reference_energies_with_unknown_element_are_rejected():
    with raises_naming("training.reference_energies", "unknown element symbol(s) ['Qq']"):
        SystemConfig(elements=["Al"], reference_energies={"Al": -3.0, "Qq": 1.0})


def test_reference_energies_must_be_fit_or_a_mapping():
    with raises_naming("training.reference_energies"):
        SystemConfig(elements=["Al"], reference_energies="guess")
    config = SystemConfig(elements=["Al"], reference_energies={"Al": -3.0})
    assert config.training.reference_energies == {"Al": -3.0}


def test_assignment_is_validated():
    config = SystemConfig(elements=["Al"])
    with raises_naming("cutoff", "greater than 0"):
        config.training.cutoff = 0.0
    assert config.training.cutoff == 5.0
    with raises_naming("elements", "duplicate element symbol(s)"):
        config.elements = ["Cu", "Cu"]


def test_validate_element_symbols_names_the_context():
    assert validate_element_symbols(["Fe", "C"]) == ["Fe", "C"]
    with pytest.raises(ValueError, match=r"reference_energies: unknown element symbol\(s\) \['Zz'\]"):
        validate_element_symbols(["Zz"], "reference_energies")
