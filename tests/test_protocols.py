"""Protocols: presets from the packaged YAML, adapted to the data size, with validated deep-merged overrides."""

from __future__ import annotations

import sys
from importlib import resources

import pytest
import yaml
from aiida import orm

from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning.config_gen import number_of_functions_per_element
from aiida_autopipec.learning.reference_data import emt_dataset
from aiida_autopipec.protocols import ProtocolError, available_protocols, get_protocol
from aiida_autopipec.workflows.active_learning import ActiveLearningWorkChain
from aiida_autopipec.workflows.base import PacemakerBaseWorkChain

PROTOCOLS = ("fast", "moderate", "precise")


@pytest.fixture(scope="module")
def small_set(aiida_profile):
    return TrainingSetData.from_ase(emt_dataset(12, seed=3)).store()


@pytest.fixture(scope="module")
def large_set(aiida_profile):
    return TrainingSetData.from_ase(emt_dataset(150, seed=4, repeat=(2, 2, 2))).store()


@pytest.fixture(scope="module")
def python_code(local_computer):
    code = orm.InstalledCode(label="python-protocols", computer=local_computer, filepath_executable=sys.executable)
    return code.store()


def test_yaml_files_are_package_data():
    """The presets are found through importlib.resources (what an installed wheel offers), with the three names."""
    for name in ("pacemaker", "active_learning"):
        content = yaml.safe_load(resources.files("aiida_autopipec.protocols").joinpath(f"{name}.yaml").read_text())
        assert content["default_protocol"] == "moderate"
        assert set(available_protocols(name)) == set(PROTOCOLS)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_calculation_builder_follows_protocol_and_data(pacemaker_code, small_set, large_set, protocol):
    preset = get_protocol("pacemaker", protocol)
    small = PacemakerCalculation.get_builder_from_protocol(pacemaker_code, small_set, protocol).parameters.get_dict()
    large = PacemakerCalculation.get_builder_from_protocol(pacemaker_code, large_set, protocol).parameters.get_dict()
    for parameters, data in ((small, small_set), (large, large_set)):
        assert parameters["maxiter"] == preset["parameters"]["maxiter"]
        assert parameters["cutoff"] == preset["parameters"]["cutoff"]
        expected = number_of_functions_per_element(
            data.num_structures, data.num_atoms, len(data.elements), preset["max_functions_per_element"]
        )
        assert parameters["number_of_functions_per_element"] == expected
        assert parameters["batch_size"] == min(preset["max_batch_size"], data.num_structures)
    # More data supports a larger basis (up to the protocol's maximum).
    assert large["number_of_functions_per_element"] > small["number_of_functions_per_element"]
    assert large["number_of_functions_per_element"] <= preset["max_functions_per_element"]


def test_protocols_differ_in_effort(pacemaker_code, large_set):
    maxiter = [
        PacemakerCalculation.get_builder_from_protocol(pacemaker_code, large_set, p).parameters["maxiter"]
        for p in PROTOCOLS
    ]
    assert maxiter == sorted(maxiter) and len(set(maxiter)) == 3
    default = PacemakerCalculation.get_builder_from_protocol(pacemaker_code, large_set).parameters.get_dict()
    moderate = PacemakerCalculation.get_builder_from_protocol(pacemaker_code, large_set, "moderate")
    assert default == moderate.parameters.get_dict()


def test_overrides_deep_merge(pacemaker_code, small_set):
    builder = PacemakerCalculation.get_builder_from_protocol(
        pacemaker_code,
        small_set,
        "fast",
        overrides={"parameters": {"maxiter": 7, "device": "cpu"}, "metadata": {"options": {"withmpi": False}}},
        test_set=small_set,
    )
    parameters = builder.parameters.get_dict()
    assert parameters["maxiter"] == 7 and parameters["device"] == "cpu"
    assert parameters["cutoff"] == get_protocol("pacemaker", "fast")["parameters"]["cutoff"]  # kept from the preset
    assert builder.test_set.uuid == small_set.uuid
    assert builder.metadata.options.withmpi is False


def test_base_workchain_builder(pacemaker_code, small_set):
    builder = PacemakerBaseWorkChain.get_builder_from_protocol(
        pacemaker_code, small_set, "precise", overrides={"pacemaker": {"parameters": {"maxiter": 9}}}
    )
    assert builder.max_iterations.value == get_protocol("pacemaker", "precise")["max_restarts"]
    parameters = builder.pacemaker.parameters.get_dict()
    assert parameters["maxiter"] == 9
    assert parameters["cutoff"] == get_protocol("pacemaker", "precise")["parameters"]["cutoff"]
    assert builder.pacemaker.code.uuid == pacemaker_code.uuid


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_active_learning_builder(pacemaker_code, python_code, small_set, protocol):
    preset = get_protocol("active_learning", protocol)
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        pacemaker_code,
        small_set,
        protocol,
        overrides={"convergence": {"max_iterations": 2}},
        candidates=small_set,
        selection_code=python_code,
        labeling_code=python_code,
        calculator="ase.calculators.emt.EMT",
    )
    convergence = builder.convergence.get_dict()
    assert convergence["max_iterations"] == 2
    assert convergence["rmse_forces"] == preset["convergence"]["rmse_forces"]
    fit_preset = get_protocol("pacemaker", preset["pacemaker_protocol"])
    assert builder.parameters["maxiter"] == fit_preset["parameters"]["maxiter"]
    assert builder.labeling.calculator.get_dict() == {"import_path": "ase.calculators.emt.EMT", "kwargs": {}}
    assert builder.selection.code.uuid == python_code.uuid


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"paramters": {"maxiter": 5}}, "unknown input 'paramters'"),
        ({"parameters": {"maxiters": 5}}, "maxiters"),
        ({"parameters": {"maxiter": -1}}, "maxiter"),
        ({"settings": {"pacemakr": {}}}, "settings: unknown key(s) ['pacemakr']"),
        ({"metadata": {"options": {"max_walltime": 10}}}, "unknown input 'metadata.options.max_walltime'"),
    ],
)
def test_bad_overrides_are_refused(pacemaker_code, small_set, overrides, message):
    with pytest.raises(ProtocolError) as info:
        PacemakerCalculation.get_builder_from_protocol(pacemaker_code, small_set, "fast", overrides=overrides)
    assert message in str(info.value)


def test_bad_overrides_of_the_workchains_are_refused(pacemaker_code, small_set):
    with pytest.raises(ProtocolError, match=r"unknown input 'pacemaker\.parameter'"):
        PacemakerBaseWorkChain.get_builder_from_protocol(
            pacemaker_code, small_set, overrides={"pacemaker": {"parameter": {}}}
        )
    with pytest.raises(ProtocolError, match=r"convergence: .*gamma_lower"):
        ActiveLearningWorkChain.get_builder_from_protocol(
            pacemaker_code, small_set, overrides={"convergence": {"gamma_lower": 30.0, "gamma_upper": 20.0}}
        )


def test_unknown_protocol(pacemaker_code, small_set):
    with pytest.raises(ProtocolError, match=r"unknown protocol 'quick'; choose one of \['fast', 'moderate'"):
        PacemakerCalculation.get_builder_from_protocol(pacemaker_code, small_set, "quick")
