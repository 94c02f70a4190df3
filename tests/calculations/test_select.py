"""``SelectionCalculation``: real selection by γ of a real tiny Pacemaker fit on the local computer, the trust
window, the parser's handling of failures, and what the validator rejects before anything is stored.

The module fixture runs one real fit (~20-60 s): 16 EMT Al-Cu structures, 6 functions/element, 5 iterations.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node

from aiida_autopipec.calculations import select
from aiida_autopipec.calculations.select import SelectionCalculation
from aiida_autopipec.config import SystemConfig
from aiida_autopipec.data import PotentialData, TrainingSetData
from aiida_autopipec.learning import select_structures
from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
from aiida_autopipec.learning.pacemaker import PacemakerRunner
from aiida_autopipec.learning.reference_data import emt_dataset

pytestmark = pytest.mark.pacemaker

#: A window wide enough for the strongly compressed candidate, not for the wildly compressed one.
WIDE_UPPER = 100.0


@pytest.fixture(scope="module")
def fit(tmp_path_factory):
    """A real Pacemaker fit: (potential, the labelled structures it was fitted on)."""
    dataset = emt_dataset(16, seed=2)
    config = SystemConfig(
        elements=["Al", "Cu"],
        training={"cutoff": 4.5, "maxiter": 5, "number_of_functions_per_element": 6, "test_size": 0.2},
    )
    runner = PacemakerRunner(PacemakerConfigGenerator(config), tmp_path_factory.mktemp("pacemaker_fit"))
    yace = runner.train(dataset)
    potential = PotentialData(
        yace=yace, yaml=runner.work_dir / "output_potential.yaml", reference_energies=runner.reference_energies
    ).store()
    return potential, dataset


@pytest.fixture(scope="module")
def potential(fit):
    return fit[0]


@pytest.fixture(scope="module")
def training_set(fit):
    return TrainingSetData.from_ase(fit[1]).store()


def _scaled(atoms, factor):
    atoms = atoms.copy()
    atoms.set_cell(atoms.cell * factor, scale_atoms=True)
    return atoms


def _rattled(atoms, stdev, seed):
    atoms = atoms.copy()
    atoms.rattle(stdev=stdev, seed=seed)
    return atoms


@pytest.fixture(scope="module")
def candidate_structures(fit):
    """0-2: training structures (γ ~1); 3, 4: rattled by 0.3 Å; 5: cell ×0.85; 6: cell ×0.6 (unphysical)."""
    dataset = fit[1]
    return [
        dataset[0],
        dataset[1],
        dataset[2],
        _rattled(dataset[3], 0.3, seed=1),
        _rattled(dataset[4], 0.3, seed=2),
        _scaled(dataset[5], 0.85),
        _scaled(dataset[6], 0.6),
    ]


@pytest.fixture(scope="module")
def python_code(local_computer):
    """This Python (it has pyace, pandas and ASE) as the code of the calculation."""
    return orm.InstalledCode(
        label="python-select",
        computer=local_computer,
        filepath_executable=sys.executable,
        default_calc_job_plugin="autopipec.select",
    ).store()


@pytest.fixture(scope="module")
def wide_run(python_code, potential, training_set, candidate_structures):
    """One real selection of up to 10 structures in [1.5, WIDE_UPPER]."""
    candidates = TrainingSetData.from_ase(candidate_structures, labelled=False)
    parameters = {"max_new_structures": 10, "gamma_upper": WIDE_UPPER}
    return run_get_node(SelectionCalculation, **_inputs(python_code, potential, training_set, candidates, parameters))


def _inputs(code, potential, training_set, candidates, parameters):
    return {
        "code": code,
        "potential": potential,
        "training_set": training_set,
        "candidates": candidates,
        "parameters": orm.Dict(parameters),
    }


def _node_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


# -- prepare_for_submission -----------------------------------------------------------------------------------
def test_prepare_writes_basis_structures_input_and_script(
    generate_calc_job, python_code, potential, training_set, candidate_structures
):
    candidates = TrainingSetData.from_ase(candidate_structures[:2])  # labelled: the labels are not sent
    folder, calcinfo = generate_calc_job(
        "autopipec.select", _inputs(python_code, potential, training_set, candidates, {"max_new_structures": 2})
    )
    assert (folder / select.POTENTIAL).read_text() == potential.get_yaml()
    with np.load(folder / select.CANDIDATES, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(select_structures.STRUCTURE_ARRAYS)
    with np.load(folder / select.TRAINING, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(select_structures.STRUCTURE_ARRAYS + select_structures.LABEL_ARRAYS)
        assert data["natoms"].tolist() == [8] * 16
    structures, energies, forces = select_structures.read_structures(folder / select.TRAINING)
    arrays = training_set.get_arrays()
    assert np.array_equal(energies, arrays.energies) and np.array_equal(np.concatenate(forces), arrays.forces)
    assert np.array_equal(structures[3].positions, arrays.to_atoms()[3].positions)
    assert json.loads((folder / select.INPUT_JSON).read_text()) == {
        "potential": select.POTENTIAL,
        "training": select.TRAINING,
        "candidates": select.CANDIDATES,
        "max_new_structures": 2,
        "gamma_lower": 1.5,
        "gamma_upper": 10.0,
        "method": "max_gamma",
        "output": select.OUTPUT,
    }
    assert (folder / select.SCRIPT).read_text() == Path(select_structures.__file__).read_text()
    assert calcinfo.codes_info[0].cmdline_params == [select.SCRIPT, select.INPUT_JSON]
    assert calcinfo.provenance_exclude_list == [select.POTENTIAL, select.TRAINING, select.CANDIDATES]
    assert select_structures.DATAFRAME not in calcinfo.retrieve_list


def test_script_needs_only_numpy_pandas_ase_pyace_and_the_standard_library():
    tree = ast.parse(Path(select_structures.__file__).read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module.split(".")[0])
    allowed = {"__future__", "json", "math", "subprocess", "sys", "pathlib", "numpy", "pandas", "ase", "pyace"}
    assert modules <= allowed, modules


def test_select_orders_by_gamma_within_the_window():
    selection = select_structures.select([1.0, 5.0, 2.0, 50.0, float("nan"), 5.0, 1.2], 2, 1.5, 10.0)
    assert selection == {
        "gammas": [1.0, 5.0, 2.0, 50.0, None, 5.0, 1.2],
        "selected": [1, 5],
        "skipped_above_upper": [3, 4],
        "below_lower": 2,
    }


# -- real runs ------------------------------------------------------------------------------------------------
def test_extrapolative_candidates_are_selected(wide_run, candidate_structures):
    results, node = wide_run
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    gammas = results["gammas"].get_array("gammas")
    print("observed max γ per candidate:", np.round(gammas, 3).tolist())
    assert gammas.shape == (7,)
    assert (gammas[:3] < 1.5).all()
    assert gammas[:3].max() < gammas[3:5].min()
    assert gammas[5] > 10.0 and gammas[6] > WIDE_UPPER
    indices = results["selected_indices"].get_list()
    assert sorted(indices) == [3, 4, 5]
    assert indices == sorted(indices, key=lambda i: -gammas[i])
    selected = results["selected"]
    assert selected.labelled is False and selected.num_structures == 3
    for atoms, index in zip(selected.to_ase(), indices, strict=True):
        want = candidate_structures[index]
        assert np.array_equal(atoms.positions, want.positions) and np.array_equal(atoms.cell, want.cell)
    statistics = results["statistics"].get_dict()
    assert statistics["num_selected"] == 3 and statistics["num_above_upper"] == 1
    assert statistics["num_below_lower"] == 3 and statistics["num_candidates"] == 7
    assert statistics["max_gamma"] == pytest.approx(gammas.max())
    assert statistics["median_gamma"] == pytest.approx(np.median(gammas))
    # Inputs are stored once; the DataFrame pickle never leaves the working folder.
    names = node.base.repository.list_object_names()
    assert select.TRAINING not in names and select.CANDIDATES not in names and select.POTENTIAL not in names
    assert select_structures.DATAFRAME not in results["retrieved"].base.repository.list_object_names()


def test_max_new_structures_keeps_the_highest(wide_run, python_code, potential, training_set, candidate_structures):
    gammas = wide_run[0]["gammas"].get_array("gammas")
    candidates = TrainingSetData.from_ase(candidate_structures[:6], labelled=False)
    parameters = {"max_new_structures": 1, "gamma_upper": WIDE_UPPER}
    results, node = run_get_node(
        SelectionCalculation, **_inputs(python_code, potential, training_set, candidates, parameters)
    )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    assert results["selected_indices"].get_list() == [int(np.argmax(gammas[:6]))] == [4]  # rattled, γ ~22
    np.testing.assert_allclose(results["gammas"].get_array("gammas"), gammas[:6], rtol=1e-10)


def test_excluded_candidates_are_not_sent_and_indices_count_the_whole_pool(
    wide_run, python_code, potential, training_set, candidate_structures
):
    """A loop passes the candidates it already used as ``exclude``: the pool is stored once, never re-stored."""
    gammas = wide_run[0]["gammas"].get_array("gammas")
    candidates = TrainingSetData.from_ase(candidate_structures, labelled=False)
    best = int(np.argmax(np.where(gammas <= WIDE_UPPER, gammas, -np.inf)))  # the one a first round would pick
    parameters = {"max_new_structures": 1, "gamma_upper": WIDE_UPPER}
    inputs = _inputs(python_code, potential, training_set, candidates, parameters)
    results, node = run_get_node(SelectionCalculation, **inputs, exclude=orm.List([best, 0]))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    shown = results["gammas"].get_array("gammas")
    assert shown.shape == (7,) and np.isnan(shown[[0, best]]).all()
    kept = [i for i in range(7) if i not in (0, best)]
    np.testing.assert_allclose(shown[kept], gammas[kept], rtol=1e-10)
    in_window = [i for i in kept if 1.5 <= gammas[i] <= WIDE_UPPER]
    expected = max(in_window, key=lambda i: gammas[i])
    assert results["selected_indices"].get_list() == [expected] and expected != best
    (atoms,) = results["selected"].to_ase()
    assert np.array_equal(atoms.positions, candidate_structures[expected].positions)
    assert results["statistics"]["num_candidates"] == 5
    assert node.inputs.candidates.uuid == candidates.uuid  # the same stored pool, nothing re-stored


@pytest.mark.parametrize(
    ("exclude", "message"),
    [
        ([7], r"exclude: expected indices of the 7 candidates \(0 to 6\)"),
        ([-1], "exclude: expected indices"),
        ([True], "exclude: expected indices"),
        ([1, 1], "an index appears more than once"),
        (list(range(7)), "all 7 candidates are excluded"),
    ],
)
def test_bad_exclude_rejected_before_anything_is_stored(
    python_code, potential, training_set, candidate_structures, exclude, message
):
    candidates = TrainingSetData.from_ase(candidate_structures, labelled=False).store()
    inputs = _inputs(python_code, potential, training_set, candidates, {"max_new_structures": 1})
    before = _node_count()
    with pytest.raises(ValueError, match=message):
        run_get_node(SelectionCalculation, **inputs, exclude=orm.List(exclude))
    assert _node_count() == before


def test_default_trust_window(wide_run, python_code, potential, training_set, candidate_structures):
    """γ 1.5-10 by default: the training structures are below it, the rattled and compressed above it."""
    gammas = wide_run[0]["gammas"].get_array("gammas")
    assert (gammas[3:] > 10.0).all()
    candidates = TrainingSetData.from_ase(candidate_structures, labelled=False)
    results, node = run_get_node(
        SelectionCalculation, **_inputs(python_code, potential, training_set, candidates, {"max_new_structures": 5})
    )
    assert node.exit_status == SelectionCalculation.exit_codes.ERROR_NO_CANDIDATE_IN_WINDOW.status
    assert "3 below, 4 above" in node.exit_message
    assert results["statistics"]["num_in_window"] == 0 and "selected" not in results


def test_no_extrapolative_candidate(python_code, potential, training_set, candidate_structures):
    candidates = TrainingSetData.from_ase(candidate_structures[:3], labelled=False)
    results, node = run_get_node(
        SelectionCalculation, **_inputs(python_code, potential, training_set, candidates, {"max_new_structures": 2})
    )
    assert node.exit_status == SelectionCalculation.exit_codes.ERROR_NO_EXTRAPOLATIVE_CANDIDATE.status
    assert "no candidate is extrapolative" in node.exit_message
    assert "selected" not in results and "selected_indices" not in results
    assert results["statistics"]["num_below_lower"] == 3
    assert results["gammas"].get_array("gammas").shape == (3,)


def test_all_candidates_above_upper(python_code, potential, training_set, candidate_structures):
    candidates = TrainingSetData.from_ase(candidate_structures[3:], labelled=False)
    _, node = run_get_node(
        SelectionCalculation, **_inputs(python_code, potential, training_set, candidates, {"max_new_structures": 2})
    )
    assert node.exit_status == SelectionCalculation.exit_codes.ERROR_ALL_CANDIDATES_ABOVE_UPPER.status


def test_script_that_does_not_finish(local_computer, potential, training_set, candidate_structures):
    code = orm.InstalledCode(label="not-python-select", computer=local_computer, filepath_executable="/bin/false")
    candidates = TrainingSetData.from_ase(candidate_structures[:1], labelled=False)
    _, node = run_get_node(
        SelectionCalculation, **_inputs(code.store(), potential, training_set, candidates, {"max_new_structures": 1})
    )
    assert node.exit_status == SelectionCalculation.exit_codes.ERROR_OUTPUT_MISSING.status
    assert select.OUTPUT in node.exit_message


def test_broken_basis_reports_the_failed_step(tmp_path, training_set, candidate_structures):
    """The script itself, on a B-basis it cannot read: the active-set step fails and says so in selection.json."""
    arrays = training_set.get_arrays()
    select_structures.write_structures(
        tmp_path / "training.npz", arrays.numbers, arrays.positions, arrays.natoms, arrays.cells, arrays.pbc,
        arrays.energies, arrays.forces,
    )  # fmt: skip
    (tmp_path / "potential.yaml").write_text("not: a basis\n")
    settings = {"potential": "potential.yaml", "training": "training.npz", "candidates": "c.npz"}
    settings.update(max_new_structures=1, gamma_lower=1.5, gamma_upper=10.0, output="selection.json")
    (tmp_path / "input.json").write_text(json.dumps(settings))
    assert select_structures.main([str(tmp_path / "input.json")]) == select_structures.EXIT_FAILED
    report = json.loads((tmp_path / "selection.json").read_text())
    assert report["stage"] == "active_set" and "pace_activeset" in report["error"]


# -- validation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({}, "max_new_structures: required"),
        ({"max_new_structures": 0}, "max_new_structures"),
        ({"max_new_structures": 2.5}, "max_new_structures"),
        ({"max_new_structures": True}, "max_new_structures"),
        ({"max_new_structures": 2, "gamma_lower": 0}, "0 < gamma_lower < gamma_upper"),
        ({"max_new_structures": 2, "gamma_lower": 5.0, "gamma_upper": 5.0}, "0 < gamma_lower < gamma_upper"),
        ({"max_new_structures": 2, "gamma_lower": 20.0}, "0 < gamma_lower < gamma_upper"),
        ({"max_new_structures": 2, "gamma_upper": "10"}, "0 < gamma_lower < gamma_upper"),
        ({"max_new_structures": 2, "method": "random"}, "method"),
        ({"max_new_structures": 2, "gamma": 3.0}, r"unknown key\(s\) \['gamma'\]"),
    ],
)
def test_bad_parameters_rejected_before_anything_is_stored(
    python_code, potential, training_set, candidate_structures, parameters, message
):
    candidates = TrainingSetData.from_ase(candidate_structures[:1], labelled=False)
    before = _node_count()
    with pytest.raises(ValueError, match=message):
        run_get_node(SelectionCalculation, **_inputs(python_code, potential, training_set, candidates, parameters))
    assert _node_count() == before


def test_bad_structure_sets_rejected_before_anything_is_stored(
    python_code, potential, training_set, candidate_structures
):
    from ase.build import bulk

    good = TrainingSetData.from_ase(candidate_structures[:1], labelled=False)
    nickel = TrainingSetData.from_ase([bulk("Ni", "fcc", a=3.52, cubic=True)], labelled=False)
    one = TrainingSetData.from_ase(training_set.to_ase()[:1])  # 8 atoms: fewer than 6 functions of an element
    cases = [
        (dict(candidates=TrainingSetData()), "candidates: the set is empty"),
        (dict(training_set=one), r"training_set: the active set for γ needs at least as many atoms"),
        (dict(candidates=nickel), r"candidates: element\(s\) \['Ni'\] are not in"),
        (dict(candidates=good, training_set=training_set.without_labels()), "training_set: must be the labelled"),
    ]
    for overrides, message in cases:
        inputs = _inputs(python_code, potential, training_set, good, {"max_new_structures": 1})
        inputs.update(overrides)
        before = _node_count()
        with pytest.raises(ValueError, match=message):
            run_get_node(SelectionCalculation, **inputs)
        assert _node_count() == before


# -- D-optimal selection ----------------------------------------------------------------------------------------
def test_d_optimal_picks_a_subset_of_the_window_with_pace_select(
    wide_run, python_code, potential, training_set, candidate_structures, fit
):
    """Real ``pace_select`` on the candidates in the trust window: at most ``max_new_structures``, all eligible."""
    extra = [_rattled(fit[1][i], 0.3, seed=10 + i) for i in range(7, 13)]
    candidates = TrainingSetData.from_ase(candidate_structures + extra, labelled=False)
    parameters = {"max_new_structures": 3, "gamma_upper": WIDE_UPPER, "method": "d_optimal"}
    results, node = run_get_node(
        SelectionCalculation, **_inputs(python_code, potential, training_set, candidates, parameters)
    )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    gammas = results["gammas"].get_array("gammas")
    window = {i for i, gamma in enumerate(gammas) if 1.5 <= gamma <= WIDE_UPPER}
    indices = results["selected_indices"].get_list()
    print("window:", sorted(window), "d-optimal:", indices, "γ:", np.round(gammas, 2).tolist())
    assert len(window) > 3 and 1 <= len(indices) <= 3 and set(indices) <= window
    assert indices == sorted(indices, key=lambda i: -gammas[i])
    assert results["statistics"]["method"] == "d_optimal"
    log = results["retrieved"].base.repository.get_object_content(select_structures.SELECT_LOG)
    assert "structures in candidate list" in log  # pace_select's own log


def test_d_optimal_respects_the_trust_window(python_code, potential, training_set, candidate_structures):
    """Training structures only (all below gamma_lower): pace_select is not even asked."""
    candidates = TrainingSetData.from_ase(candidate_structures[:3], labelled=False)
    parameters = {"max_new_structures": 2, "method": "d_optimal"}
    results, node = run_get_node(
        SelectionCalculation, **_inputs(python_code, potential, training_set, candidates, parameters)
    )
    assert node.exit_status == SelectionCalculation.exit_codes.ERROR_NO_EXTRAPOLATIVE_CANDIDATE.status
    assert select_structures.SELECT_LOG not in results["retrieved"].base.repository.list_object_names()
