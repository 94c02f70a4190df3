"""``AseLabelCalculation``: real runs of the labelling script with ASE's EMT on the local computer, the parser's
handling of failures, and what the validator rejects before anything is stored."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk
from ase.calculators.emt import EMT

from aiida_autopipec.calculations import ase_label
from aiida_autopipec.calculations.ase_label import AseLabelCalculation
from aiida_autopipec.data import TrainingSetData
from aiida_autopipec.learning import label_structures
from aiida_autopipec.learning.reference_data import emt_dataset

EMT_CALCULATOR = {"import_path": "ase.calculators.emt.EMT", "kwargs": {}}


@pytest.fixture(scope="module")
def python_code(local_computer):
    """This Python (it has ASE and EMT) as the code of the calculation."""
    return orm.InstalledCode(
        label="python-ase-label",
        computer=local_computer,
        filepath_executable=sys.executable,
        default_calc_job_plugin="autopipec.ase_label",
    ).store()


@pytest.fixture(scope="module")
def candidates():
    """Four unlabelled Al-Cu fcc structures (8 atoms each)."""
    return emt_dataset(4, seed=11, labelled=False)


def _inputs(code, structures, calculator=None, **extra):
    return {
        "code": code,
        "structures": structures,
        "calculator": orm.Dict(calculator if calculator is not None else EMT_CALCULATOR),
        **extra,
    }


def _emt_labels(structures):
    energies, forces = [], []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = EMT()
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    return energies, forces


def _assert_labels_match_emt(labelled: TrainingSetData, structures) -> None:
    expected_energies, expected_forces = _emt_labels(structures)
    got = labelled.to_ase()
    assert len(got) == len(structures)
    for atoms, want, energy, forces in zip(got, structures, expected_energies, expected_forces, strict=True):
        assert atoms.get_chemical_symbols() == want.get_chemical_symbols()
        assert np.array_equal(atoms.positions, want.positions)
        assert atoms.get_potential_energy() == pytest.approx(energy, abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), forces, rtol=0, atol=1e-10)


def _node_count() -> int:
    return orm.QueryBuilder().append(orm.Node).count()


def _warnings(node) -> list[str]:
    return [log.message for log in orm.Log.collection.get_logs_for(node) if log.levelname == "WARNING"]


# -- prepare_for_submission -----------------------------------------------------------------------------------
def test_prepare_writes_geometry_input_and_script(generate_calc_job, python_code):
    """A labelled input is sent without its labels; the code runs the copied script on label_input.json."""
    structures = emt_dataset(3, seed=5)
    folder, calcinfo = generate_calc_job(
        "autopipec.ase_label", _inputs(python_code, TrainingSetData.from_ase(structures))
    )
    with np.load(folder / ase_label.STRUCTURES, allow_pickle=False) as data:
        assert sorted(data.files) == sorted(label_structures.STRUCTURE_ARRAYS)
        assert np.array_equal(data["positions"], np.concatenate([atoms.positions for atoms in structures]))
        assert data["natoms"].tolist() == [8, 8, 8]
    settings = json.loads((folder / ase_label.INPUT_JSON).read_text())
    assert settings == {
        "structures": ase_label.STRUCTURES,
        "calculator": EMT_CALCULATOR,
        "output": ase_label.OUTPUT,
        "report": ase_label.REPORT,
    }
    assert (folder / ase_label.SCRIPT).read_text() == Path(label_structures.__file__).read_text()
    codeinfo = calcinfo.codes_info[0]
    assert codeinfo.cmdline_params == [ase_label.SCRIPT, ase_label.INPUT_JSON]
    assert codeinfo.code_uuid == python_code.uuid
    assert set(calcinfo.retrieve_list) == {ase_label.REPORT, ase_label.STDOUT, ase_label.STDERR}
    assert calcinfo.retrieve_temporary_list == [ase_label.OUTPUT]  # stored once, as the labelled output
    assert calcinfo.provenance_exclude_list == [ase_label.STRUCTURES]
    # The geometry written can be read back by the script alone.
    read = label_structures.read_structures(folder / ase_label.STRUCTURES)
    assert all(atoms.calc is None for atoms in read)
    for got, want in zip(read, structures, strict=True):
        assert np.array_equal(got.positions, want.positions) and np.array_equal(got.cell, want.cell)


def test_script_needs_only_numpy_ase_and_the_standard_library():
    tree = ast.parse(Path(label_structures.__file__).read_text())
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module.split(".")[0])
    assert modules <= {"__future__", "importlib", "json", "sys", "pathlib", "numpy", "ase"}, modules


# -- real runs ------------------------------------------------------------------------------------------------
def test_labels_equal_a_direct_emt_evaluation(python_code, candidates):
    structures = TrainingSetData.from_ase(candidates, labelled=False)
    results, node = run_get_node(AseLabelCalculation, **_inputs(python_code, structures))
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    labelled = results["labelled"]
    assert labelled.labelled is True
    assert labelled.num_structures == 4 and labelled.elements == ["Al", "Cu"]
    _assert_labels_match_emt(labelled, candidates)
    assert results["indices"].get_list() == [0, 1, 2, 3]
    assert results["failures"].get_dict() == {"failures": []}
    assert _warnings(node) == []
    # The geometry is stored once, as the input: it is not in the calculation's repository.
    assert ase_label.STRUCTURES not in node.base.repository.list_object_names()


def test_some_structures_fail(python_code, candidates):
    """EMT has no parameters for Fe and Si: those structures are reported and left out, the others are kept."""
    iron, silicon = bulk("Fe", "bcc", a=2.87, cubic=True), bulk("Si", "diamond", a=5.43)
    structures = [candidates[0], iron, candidates[1], candidates[2], silicon]
    results, node = run_get_node(
        AseLabelCalculation, **_inputs(python_code, TrainingSetData.from_ase(structures, labelled=False))
    )
    assert node.is_finished_ok, (node.exit_status, node.exit_message)
    failures = results["failures"].get_dict()["failures"]
    assert [failure["index"] for failure in failures] == [1, 4]
    assert failures[0]["error"] == "NotImplementedError: No EMT-potential for Fe"
    assert failures[1]["error"] == "NotImplementedError: No EMT-potential for Si"
    assert results["indices"].get_list() == [0, 2, 3]
    _assert_labels_match_emt(results["labelled"], [candidates[0], candidates[1], candidates[2]])
    (warning,) = _warnings(node)
    assert "2 of 5 structures could not be labelled" in warning and "[1, 4]" in warning


def test_all_structures_fail(python_code):
    structures = [bulk("Fe", "bcc", a=2.87, cubic=True), bulk("Si", "diamond", a=5.43)]
    results, node = run_get_node(
        AseLabelCalculation, **_inputs(python_code, TrainingSetData.from_ase(structures, labelled=False))
    )
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_ALL_STRUCTURES_FAILED.status
    assert "none of the 2 structures" in node.exit_message and "No EMT-potential for Fe" in node.exit_message
    assert "labelled" not in results
    assert [failure["index"] for failure in results["failures"].get_dict()["failures"]] == [0, 1]


@pytest.mark.parametrize(
    ("import_path", "message"),
    [
        ("ase.calculators.nosuch.Calc", "No module named 'ase.calculators.nosuch'"),
        ("ase.calculators.emt.NoSuchCalculator", "module 'ase.calculators.emt' has no attribute 'NoSuchCalculator'"),
        # Syntactically a dotted path, but not a class: never called.
        ("os.system", "'os.system' is a builtin_function_or_method, not a calculator class"),
    ],
)
def test_calculator_that_cannot_be_imported(python_code, candidates, import_path, message):
    structures = TrainingSetData.from_ase(candidates[:1], labelled=False)
    results, node = run_get_node(
        AseLabelCalculation, **_inputs(python_code, structures, {"import_path": import_path, "kwargs": {}})
    )
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_CALCULATOR_IMPORT.status
    assert import_path in node.exit_message and message in node.exit_message
    assert "labelled" not in results and "failures" not in results


@pytest.mark.parametrize(
    ("import_path", "message"),
    [
        ("ase.calculators.singlepoint.SinglePointCalculator", "TypeError"),
        ("collections.OrderedDict", "is not an ASE calculator"),
    ],
)
def test_calculator_that_cannot_be_created(python_code, candidates, import_path, message):
    structures = TrainingSetData.from_ase(candidates[:1], labelled=False)
    _, node = run_get_node(
        AseLabelCalculation, **_inputs(python_code, structures, {"import_path": import_path, "kwargs": {}})
    )
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_CALCULATOR_SETUP.status
    assert message in node.exit_message


def test_script_that_does_not_finish(local_computer, candidates):
    """A code that is not a working Python writes nothing: the output is reported missing, with stderr."""
    code = orm.InstalledCode(label="not-python", computer=local_computer, filepath_executable="/bin/false").store()
    _, node = run_get_node(
        AseLabelCalculation, **_inputs(code, TrainingSetData.from_ase(candidates[:1], labelled=False))
    )
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_OUTPUT_MISSING.status
    assert ase_label.REPORT in node.exit_message


# -- parser on corrupt outputs -------------------------------------------------------------------------------
@pytest.fixture
def parse_retrieved(local_computer, candidates):
    """Parse a retrieved folder holding ``files`` for a calculation on the first three candidates."""

    def parse(files: dict[str, bytes]):
        from aiida.common import LinkType
        from aiida.plugins import ParserFactory

        node = orm.CalcJobNode(computer=local_computer, process_type="aiida.calculations:autopipec.ase_label")
        node.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
        structures = TrainingSetData.from_ase(candidates[:3], labelled=False).store()
        node.base.links.add_incoming(structures, LinkType.INPUT_CALC, "structures")
        node.base.links.add_incoming(orm.Dict(EMT_CALCULATOR).store(), LinkType.INPUT_CALC, "calculator")
        node.store()
        retrieved = orm.FolderData()
        for name, content in files.items():
            retrieved.base.repository.put_object_from_bytes(content, name)
        retrieved.base.links.add_incoming(node, LinkType.CREATE, "retrieved")
        retrieved.store()
        return ParserFactory("autopipec.ase_label").parse_from_node(node, store_provenance=False)

    return parse


def _npz(**arrays) -> bytes:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _report(failures, num_structures=3) -> bytes:
    return json.dumps({"num_structures": num_structures, "failures": failures}).encode()


def test_parser_report_unreadable(parse_retrieved):
    _, calcfunction = parse_retrieved({ase_label.REPORT: b"{not json"})
    assert calcfunction.exit_status == AseLabelCalculation.exit_codes.ERROR_OUTPUT_UNREADABLE.status


def test_parser_output_missing_although_labelled(parse_retrieved):
    _, calcfunction = parse_retrieved({ase_label.REPORT: _report([])})
    assert calcfunction.exit_status == AseLabelCalculation.exit_codes.ERROR_OUTPUT_UNREADABLE.status
    assert ase_label.OUTPUT in calcfunction.exit_message


@pytest.mark.parametrize(
    ("indices", "energies", "forces", "message"),
    [
        ([0, 1], [0.0, 0.0], np.zeros((16, 3)), r"labels for structures \[0, 1\], expected \[0, 2\]"),
        ([0, 2], [0.0], np.zeros((16, 3)), "energies"),
        ([0, 2], [0.0, np.nan], np.zeros((16, 3)), "NaN"),
    ],
)
def test_parser_inconsistent_labels(parse_retrieved, indices, energies, forces, message):
    files = {
        ase_label.REPORT: _report([{"index": 1, "error": "RuntimeError: SCF did not converge"}]),
        ase_label.OUTPUT: _npz(indices=np.array(indices), energies=np.array(energies), forces=forces),
    }
    _, calcfunction = parse_retrieved(files)
    assert calcfunction.exit_status == AseLabelCalculation.exit_codes.ERROR_OUTPUT_UNREADABLE.status
    assert re.search(message, calcfunction.exit_message), calcfunction.exit_message


def test_parser_report_for_other_structures(parse_retrieved):
    _, calcfunction = parse_retrieved({ase_label.REPORT: _report([{"index": 7, "error": "x"}])})
    assert calcfunction.exit_status == AseLabelCalculation.exit_codes.ERROR_OUTPUT_UNREADABLE.status


# -- validation ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("calculator", "message"),
    [
        ({"import_path": "os.system('rm -rf /')", "kwargs": {}}, "not of the form"),
        ({"import_path": "a;b", "kwargs": {}}, "not of the form"),
        ({"import_path": "ase.calculators.emt.EMT; rm -rf ~", "kwargs": {}}, "not of the form"),
        ({"import_path": "$(reboot).Calc", "kwargs": {}}, "not of the form"),
        ({"import_path": "__import__('os').system", "kwargs": {}}, "not of the form"),
        ({"import_path": "EMT", "kwargs": {}}, "not of the form"),
        ({"import_path": "ase..EMT", "kwargs": {}}, "not of the form"),
        ({"import_path": " ase.calculators.emt.EMT", "kwargs": {}}, "not of the form"),
        ({"import_path": "ase.calculators.emt.EMT\n", "kwargs": {}}, "not of the form"),
        ({"import_path": "import.EMT", "kwargs": {}}, "not of the form"),
        ({"import_path": "", "kwargs": {}}, "not of the form"),
        ({"import_path": 42, "kwargs": {}}, "import_path: required"),
        ({"kwargs": {}}, "import_path: required"),
        ({"import_path": "ase.calculators.emt.EMT", "kwargs": [1, 2]}, "kwargs: expected a dict"),
        ({"import_path": "ase.calculators.emt.EMT", "kwargs": {"x": float("nan")}}, "not JSON-serialisable"),
        ({"import_path": "ase.calculators.emt.EMT", "command": "rm -rf /"}, r"unknown key\(s\) \['command'\]"),
    ],
)
def test_bad_calculator_rejected_before_anything_is_stored(python_code, candidates, calculator, message):
    structures = TrainingSetData.from_ase(candidates[:1], labelled=False)
    before = _node_count()
    with pytest.raises(ValueError, match=message):
        run_get_node(AseLabelCalculation, **_inputs(python_code, structures, calculator))
    assert _node_count() == before


def test_empty_structures_rejected_before_anything_is_stored(python_code):
    before = _node_count()
    with pytest.raises(ValueError, match="structures: the set is empty"):
        run_get_node(AseLabelCalculation, **_inputs(python_code, TrainingSetData()))
    assert _node_count() == before


def test_wrong_input_type_rejected(python_code, candidates):
    before = _node_count()
    with pytest.raises(ValueError, match="structures"):
        run_get_node(AseLabelCalculation, **_inputs(python_code, orm.StructureData(ase=candidates[0])))
    assert _node_count() == before
