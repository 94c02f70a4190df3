"""PacemakerCalculation inputs: what prepare_for_submission writes, and what the validator rejects."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from aiida import orm
from aiida.engine import run_get_node

from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning import files
from aiida_autopipec.learning.pacemaker import REFERENCE_ENERGIES_JSON


@pytest.fixture
def inputs(pacemaker_code, emt_structures, fast_parameters):
    return {
        "code": pacemaker_code,
        "training_set": TrainingSetData.from_ase(emt_structures),
        "parameters": orm.Dict(fast_parameters),
    }


def test_prepare_writes_dataset_input_and_references(generate_calc_job, inputs):
    folder, calcinfo = generate_calc_job("autopipec.pacemaker", inputs)
    config = yaml.safe_load((folder / files.INPUT_YAML).read_text())
    assert config["potential"]["bonds"]["ALL"]["rcut"] == 4.5
    assert config["potential"]["elements"] == ["Al", "Cu"]
    assert config["potential"]["functions"]["number_of_functions_per_element"] == 8
    assert config["data"] == {"filename": files.TRAINING_DATA, "test_size": 0.2}
    assert config["backend"]["gpu_config"] == {"gpu_ind": -1, "mem_limit": 0}

    references = json.loads((folder / REFERENCE_ENERGIES_JSON).read_text())
    frame = pd.read_pickle(folder / files.TRAINING_DATA)
    assert len(frame) == inputs["training_set"].num_structures
    for _, row in frame.iterrows():
        symbols = row["ase_atoms"].get_chemical_symbols()
        expected = row["energy"] - sum(references[s] for s in symbols)
        assert row["energy_corrected"] == pytest.approx(expected, abs=1e-9)

    # No predictions by Pacemaker after the fit: nothing would keep them (the evaluation gives the model's errors).
    assert calcinfo.codes_info[0].cmdline_params == ["--verbose-tf", "--no-predict", files.INPUT_YAML]
    assert calcinfo.codes_info[0].stderr_name == files.STDERR
    assert set(files.RETRIEVE_LIST) <= set(calcinfo.retrieve_list)
    assert files.TRAIN_PREDICTIONS not in calcinfo.retrieve_list
    # What becomes output nodes is fetched for parsing only, not kept twice in the repository.
    assert calcinfo.retrieve_temporary_list == files.RETRIEVE_TEMPORARY_LIST
    assert not set(files.RETRIEVE_TEMPORARY_LIST) & set(calcinfo.retrieve_list)
    assert files.TRAINING_DATA in calcinfo.provenance_exclude_list
    # The exit code is captured first; the Python next to pacemaker converts to .yace and evaluates, in one process.
    first_line = calcinfo.append_text.splitlines()[0]
    assert first_line == f"echo $? > {files.EXIT_STATUS}"
    executable_dir = str(inputs["code"].filepath_executable.parent)
    assert "pace_yaml2yace" not in calcinfo.append_text
    assert f"if [ -f {files.OUTPUT_POTENTIAL_YAML} ]" in calcinfo.append_text
    # The delivered model is evaluated on the compute side by a standalone script and its ZBL module.
    assert f"{executable_dir}/python {files.EVALUATION_SCRIPT} {files.EVALUATION_INPUT}" in calcinfo.append_text
    assert (folder / files.EVALUATION_SCRIPT).is_file() and (folder / files.EVALUATION_ZBL_MODULE).is_file()
    evaluation = json.loads((folder / files.EVALUATION_INPUT).read_text())
    assert evaluation["convert"] == {"yaml": files.OUTPUT_POTENTIAL_YAML, "log": files.YAML2YACE_LOG}
    assert evaluation["mode"] == "core_repulsion" and evaluation["baseline"] is None
    assert set(evaluation["pair_cutoffs"]) == {"Al-Al", "Al-Cu", "Cu-Cu"}
    assert evaluation["cutoff"] == 4.5


def test_core_repulsion_below_the_shortest_distances(generate_calc_job, inputs, emt_structures):
    """Default baseline: Pacemaker's ZBL core per pair, fully off below 90 % of the pair's shortest distance."""
    from aiida_autopipec.learning.baseline import shortest_pair_distances

    folder, _ = generate_calc_job("autopipec.pacemaker", inputs)
    bonds = yaml.safe_load((folder / files.INPUT_YAML).read_text())["potential"]["bonds"]
    shortest = shortest_pair_distances(emt_structures, ["Al", "Cu"])
    for pair in ("Al-Al", "Al-Cu", "Cu-Cu"):
        bond = bonds[pair.replace("-", "")]
        assert bond["inner_cutoff_type"] == "zbl"
        assert bond["core-repulsion"] == [1.0, 1.0]
        assert bond["r_in"] <= 0.9 * shortest[pair] + 1e-9
        assert 0 < bond["r_in"] - bond["delta_in"] < bond["r_in"]


def test_zbl_delta_writes_the_residual(generate_calc_job, inputs):
    """zbl_delta: Pacemaker fits energy - references - E_ZBL and forces - F_ZBL."""
    from aiida_autopipec.learning.dataset import zbl_baseline

    inputs["parameters"] = orm.Dict({**inputs["parameters"].get_dict(), "baseline": "zbl_delta"})
    folder, _ = generate_calc_job("autopipec.pacemaker", inputs)
    evaluation = json.loads((folder / files.EVALUATION_INPUT).read_text())
    assert evaluation["baseline"] == {"type": "zbl", "pair_cutoffs": evaluation["pair_cutoffs"]}
    bonds = yaml.safe_load((folder / files.INPUT_YAML).read_text())["potential"]["bonds"]
    assert set(bonds) == {"ALL"}  # no Pacemaker core on top of the baseline
    references = json.loads((folder / REFERENCE_ENERGIES_JSON).read_text())
    frame = pd.read_pickle(folder / files.TRAINING_DATA)
    arrays = inputs["training_set"].get_arrays()
    zbl_energies, zbl_forces = zbl_baseline(arrays, evaluation["pair_cutoffs"])
    for i, (_, row) in enumerate(frame.iterrows()):
        symbols = row["ase_atoms"].get_chemical_symbols()
        expected = row["energy"] - sum(references[s] for s in symbols) - zbl_energies[i]
        assert row["energy_corrected"] == pytest.approx(expected, abs=1e-9)
        start = arrays.offsets[i]
        assert row["forces"] == pytest.approx(
            arrays.forces[start : start + len(symbols)] - zbl_forces[start : start + len(symbols)]
        )


def test_prepare_with_test_set_and_settings(generate_calc_job, inputs, emt_test_structures):
    inputs["test_set"] = TrainingSetData.from_ase(emt_test_structures)
    inputs["settings"] = orm.Dict({"pacemaker": {"fit": {"loss": {"L1_coeffs": 1e-5}}}, "retrieve_predictions": True})
    folder, calcinfo = generate_calc_job("autopipec.pacemaker", inputs)
    config = yaml.safe_load((folder / files.INPUT_YAML).read_text())
    assert config["data"] == {"filename": files.TRAINING_DATA, "test_filename": files.TEST_DATA}
    assert config["fit"]["loss"]["L1_coeffs"] == 1e-5
    assert config["fit"]["loss"]["kappa"] == 0.7  # the rest of the generated section is kept
    assert len(pd.read_pickle(folder / files.TEST_DATA)) == 8
    assert files.TRAIN_PREDICTIONS in calcinfo.retrieve_list
    assert calcinfo.codes_info[0].cmdline_params == ["--verbose-tf", files.INPUT_YAML]  # so Pacemaker predicts


def test_named_yaml2yace_executable_runs_before_the_evaluation(generate_calc_job, inputs):
    inputs["settings"] = orm.Dict({"yaml2yace_executable": "/opt/ace/bin/pace_yaml2yace"})
    _, calcinfo = generate_calc_job("autopipec.pacemaker", inputs)
    lines = calcinfo.append_text.splitlines()
    convert = next(i for i, line in enumerate(lines) if "/opt/ace/bin/pace_yaml2yace -o" in line)
    evaluate = next(i for i, line in enumerate(lines) if files.EVALUATION_SCRIPT in line)
    assert convert < evaluate and lines[evaluate - 1] == f"if [ -f {files.OUTPUT_POTENTIAL_YACE} ]; then"


def test_user_reference_energies_are_used(generate_calc_job, inputs):
    inputs["parameters"] = orm.Dict({**inputs["parameters"].get_dict(), "reference_energies": {"Al": -1, "Cu": -2}})
    folder, _ = generate_calc_job("autopipec.pacemaker", inputs)
    assert json.loads((folder / REFERENCE_ENERGIES_JSON).read_text()) == {"Al": -1.0, "Cu": -2.0}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"parameters": {"cutoff": -1.0}}, "cutoff"),
        ({"parameters": {"test_size": 1.5}}, "test_size"),
        ({"parameters": {"maxiter": -3}}, "maxiter"),
        ({"parameters": {"cutof": 4.0}}, "cutof"),
        ({"parameters": {"elements": ["Al"]}}, "not in elements"),
        ({"parameters": {"elements": ["Al", "Qq"]}}, "Qq"),
        ({"parameters": {"reference_energies": {"Al": 0.0}}}, "Cu"),
        ({"settings": {"pacemaker": {"fit": {"loss": {"kapa": 0.5}}}}}, "did you mean 'kappa'"),
        ({"settings": {"pacemaker": {"data": {"filename": "/etc/passwd"}}}}, "data.filename"),
        ({"settings": {"retrieve_everything": True}}, "unknown key"),
        ({"metadata": {"options": {"append_text": "echo hi"}}}, "append_text"),
    ],
)
def test_bad_inputs_rejected_before_anything_is_stored(inputs, change, message):
    inputs = dict(inputs)
    if "parameters" in change:
        inputs["parameters"] = orm.Dict({**inputs["parameters"].get_dict(), **change["parameters"]})
    if "settings" in change:
        inputs["settings"] = orm.Dict(change["settings"])
    if "metadata" in change:
        inputs["metadata"] = change["metadata"]
    nodes_before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match=message):
        run_get_node(PacemakerCalculation, **inputs)
    assert orm.QueryBuilder().append(orm.Node).count() == nodes_before


def _recorded(case: str, name: str) -> str:
    from tests.conftest import RECORDED

    return (RECORDED / case / name).read_text()


def test_restart_potential_continues_from_a_bare_yaml(generate_calc_job, inputs):
    """restart_potential: Pacemaker starts from the given B-basis; references and cutoffs are the fresh fit's."""
    fresh, _ = generate_calc_job("autopipec.pacemaker", inputs)
    expected = {
        name: json.loads((fresh / name).read_text()) for name in (REFERENCE_ENERGIES_JSON, files.EVALUATION_INPUT)
    }
    interim = _recorded("killed", files.INTERIM_POTENTIAL)
    inputs["restart_potential"] = orm.SinglefileData.from_string(interim, files.INTERIM_POTENTIAL)
    folder, _ = generate_calc_job("autopipec.pacemaker", inputs)
    assert yaml.safe_load((folder / files.INPUT_YAML).read_text())["potential"] == files.INITIAL_POTENTIAL
    assert (folder / files.INITIAL_POTENTIAL).read_text() == interim
    for name, content in expected.items():
        assert json.loads((folder / name).read_text()) == content


def test_warm_start_lowers_only_the_cores_the_new_data_reach_into(generate_calc_job, inputs):
    """Cutoffs of the continued potential are kept unless the new data come closer (then the rule's)."""
    from aiida_autopipec.data import PotentialData

    fresh, _ = generate_calc_job("autopipec.pacemaker", inputs)
    rule = json.loads((fresh / files.EVALUATION_INPUT).read_text())["pair_cutoffs"]
    kept = {"Al-Al": [rule["Al-Al"][0] + 0.3, rule["Al-Al"][1] + 0.3], "Al-Cu": [1.0, 1.2], "Cu-Cu": [1.0, 1.2]}
    inputs["initial_potential"] = PotentialData(
        yace=_recorded("success_core_repulsion", files.OUTPUT_POTENTIAL_YACE),
        yaml=_recorded("success_core_repulsion", files.OUTPUT_POTENTIAL_YAML),
        short_range={"mode": "core_repulsion", "pair_cutoffs": kept},
    )
    folder, _ = generate_calc_job("autopipec.pacemaker", inputs)
    cutoffs = json.loads((folder / files.EVALUATION_INPUT).read_text())["pair_cutoffs"]
    assert cutoffs == {"Al-Al": rule["Al-Al"], "Al-Cu": [1.0, 1.2], "Cu-Cu": [1.0, 1.2]}
    recorded = {
        block["speciesblock"]: block
        for block in yaml.safe_load(_recorded("success_core_repulsion", files.OUTPUT_POTENTIAL_YAML))["species"]
    }
    for block in yaml.safe_load((folder / files.INITIAL_POTENTIAL).read_text())["species"]:
        if block["speciesblock"] == "Al":
            assert block["r_in"] == rule["Al-Al"][1]
            assert block["delta_in"] == pytest.approx(rule["Al-Al"][1] - rule["Al-Al"][0])
        else:  # untouched, coefficients included
            assert block == recorded[block["speciesblock"]]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("both", "give at most one"),
        ("not_a_potential", "not a Pacemaker B-basis"),
        ("elements", "covers"),
        ("basis_override", "settings.pacemaker.potential"),
    ],
)
def test_bad_restart_potential_rejected(inputs, change, message):
    from aiida_autopipec.data import PotentialData

    interim = _recorded("killed", files.INTERIM_POTENTIAL)
    inputs["restart_potential"] = orm.SinglefileData.from_string(interim, files.INTERIM_POTENTIAL)
    if change == "both":
        inputs["initial_potential"] = PotentialData(
            yace=_recorded("success", files.OUTPUT_POTENTIAL_YACE),
            yaml=_recorded("success", files.OUTPUT_POTENTIAL_YAML),
        )
    elif change == "not_a_potential":
        inputs["restart_potential"] = orm.SinglefileData.from_string("fit: {maxiter: 3}\n")
    elif change == "elements":
        inputs["parameters"] = orm.Dict({**inputs["parameters"].get_dict(), "elements": ["Al", "Cu", "Ni"]})
    elif change == "basis_override":
        inputs["settings"] = orm.Dict({"pacemaker": {"potential": {"deltaSplineBins": 0.002}}})
    with pytest.raises(ValueError, match=message):
        run_get_node(PacemakerCalculation, **inputs)
