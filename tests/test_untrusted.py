"""Untrusted data: nothing a user supplies is unpickled or YAML-constructed, nothing reaches a shell unquoted, and
expert overrides cannot point Pacemaker outside its working directory.

Every hostile payload here would create a marker file if it ran; each test asserts the marker does not exist.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import pickle
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from aiida import orm
from aiida.engine import run_get_node

from aiida_autopipec.calculations.ase_label import AseLabelCalculation
from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
from aiida_autopipec.config import SystemConfig
from aiida_autopipec.data import PotentialData, TrainingSetData
from aiida_autopipec.learning import files, label_structures, select_structures
from aiida_autopipec.learning.config_gen import ConfigError, PacemakerConfigGenerator
from aiida_autopipec.learning.dataset import StructureArrays
from aiida_autopipec.learning.pacemaker import post_fit_script
from aiida_autopipec.learning.potential import potential_info
from aiida_autopipec.workflows.base import is_finite_potential
from tests.conftest import FAST_PARAMETERS

PACKAGE = Path(__file__).parents[1] / "aiida_autopipec"
RECORDED = Path(__file__).parent / "parsers" / "recorded" / "success"

#: Every place the package may deserialise with pickle, and why that file is not a user's.
PICKLE_READERS = {
    ("learning/config_gen.py", "pd.read_pickle"): "only with generate(trusted=True); else ConfigError",
    ("learning/readers.py", "pd.read_pickle"): "read_pacemaker_frame: `autopipec data import --trust-pickle` only",
    ("learning/evaluate_model.py", "pd.read_pickle"): "compute side: files Pacemaker wrote in this job",
    ("learning/select_structures.py", "pd.read_pickle"): "compute side: the file pace_select wrote in this job",
}
UNSAFE_CALLS = re.compile(
    r"pickle\.loads?\(|read_pickle\(|yaml\.load\(|yaml\.unsafe_load|yaml\.full_load|Loader=|allow_pickle=True|"
    r"\beval\(|\bexec\(|shell=True|os\.system\(|os\.popen\(|dill\.|joblib\.load|torch\.load"
)


class Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def hostile(directory: Path | None) -> str:
    """One string with every usual way to break out of a shell word; each creates its own marker if it runs
    (in ``directory``, or with ``None`` in the current directory: short enough for a label, which PostgreSQL
    limits to 255 characters)."""
    m = [f"pwned_{i}" if directory is None else directory / f"pwned_{i}" for i in range(8)]
    return (
        f"$(touch {m[0]}) `touch {m[1]}`; touch {m[2]} && touch {m[3]} | touch {m[4]}\n"
        f"touch {m[5]}\n' ; touch {m[6]} ; '\" ; touch {m[7]} ; \" \\"
    )


def markers(directory: Path) -> list[Path]:
    return sorted(directory.glob("pwned_*"))


# -- no unsafe deserialisation in the package ------------------------------------------------------------------
def test_every_unsafe_call_in_the_package_is_accounted_for():
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for line in path.read_text().splitlines():
            code = line.split("#")[0]
            for match in UNSAFE_CALLS.finditer(code):
                found.add((str(path.relative_to(PACKAGE)), match.group(0).rstrip("(")))
    allowed = {(module, call.split(".")[-1] if call.startswith("pd.") else call) for module, call in PICKLE_READERS}
    assert found == {(module, "read_pickle") for module, _ in allowed}, found


def test_yaml_is_only_loaded_with_the_safe_loader():
    loads = [
        (path.name, line.strip())
        for path in PACKAGE.rglob("*.py")
        for line in path.read_text().splitlines()
        if "yaml." in line and "load" in line
    ]
    assert loads and all("yaml.safe_load(" in line for _, line in loads), loads


# -- pickles fed to every importer -------------------------------------------------------------------------------
def _pickled(marker: Path) -> bytes:
    return pickle.dumps(Payload(marker))


def _npz_with_object(marker: Path) -> bytes:
    buffer = io.BytesIO()
    arrays = {name: np.array([Payload(marker)], dtype=object) for name in StructureArrays.FIELDS}
    np.savez(buffer, **arrays)  # object arrays are pickled inside the .npz
    return buffer.getvalue()


def _importers():
    """(name, function of a path) for every way a user's file gets in."""

    def generator(path):
        return PacemakerConfigGenerator(SystemConfig(elements=["Al", "Cu"])).generate(path)

    importers = {
        "from_file": TrainingSetData.from_file,
        "from_ase_db": TrainingSetData.from_ase_db,
        "load_npz": StructureArrays.load_npz,
        "label_script": label_structures.read_structures,
        "selection_script": select_structures.read_structures,
        "potential_yaml": lambda path: PotentialData(yace=RECORDED / "output_potential.yace", yaml=path),
        "generator": generator,
    }
    if importlib.util.find_spec("aiida_autopipec.cli.data") is not None:  # `autopipec data import`
        from aiida_autopipec.cli.data import import_structures

        importers["cli_auto"] = lambda path: import_structures(path)
        importers["cli_extxyz"] = lambda path: import_structures(path, "extxyz")
        importers["cli_db"] = lambda path: import_structures(path, "db")
        importers["cli_pickle_untrusted"] = lambda path: import_structures(path, "pickle")
    return importers


@pytest.mark.parametrize("suffix", [".extxyz", ".db", ".json", ".npz", ".pckl.gzip", ".pkl", ".yaml"])
@pytest.mark.parametrize("encoding", ["pickle", "gzip-pickle", "npz-object"])
def test_no_importer_unpickles_a_users_file(tmp_path, suffix, encoding):
    marker = tmp_path / "pwned_pickle"
    content = {
        "pickle": _pickled,
        "gzip-pickle": lambda m: gzip.compress(_pickled(m)),
        "npz-object": _npz_with_object,
    }[encoding](marker)
    path = tmp_path / f"evil{suffix}"
    path.write_bytes(content)
    refused = []
    for name, importer in _importers().items():
        try:
            importer(path)
        except Exception as exc:  # each refuses in its own words; what matters is that nothing ran
            refused.append(name)
            assert not isinstance(exc, (AssertionError, SystemExit)), (name, exc)
        assert not marker.exists(), f"{name} executed the payload of {path.name}"
    assert len(refused) == len(_importers())


def test_a_stored_shard_that_holds_a_pickle_is_not_executed(tmp_path, emt_structures):
    """A TrainingSetData from someone else's archive whose .npz shard was replaced by one with pickled objects."""
    marker = tmp_path / "pwned_shard"
    training_set = TrainingSetData.from_ase(emt_structures[:2])
    shard = training_set.base.attributes.get("shards")[0]["file"]
    training_set.base.repository.put_object_from_bytes(_npz_with_object(marker), shard)
    with pytest.raises(ValueError, match="allow_pickle=False"):
        training_set.get_arrays()
    assert not marker.exists()


def test_a_trusted_pickle_is_read_only_when_asked(tmp_path, emt_structures):
    """The one opt-in: `generate(..., trusted=True)` on a dataset this plugin wrote."""
    from aiida_autopipec.learning.dataset import write_pacemaker_dataset

    arrays = StructureArrays.from_atoms(emt_structures[:4])
    path = write_pacemaker_dataset(tmp_path / files.TRAINING_DATA, arrays, {"Al": 0.0, "Cu": 0.0})
    generator = PacemakerConfigGenerator(
        SystemConfig(elements=["Al", "Cu"], number_of_functions_per_element=4, test_size=0.5)
    )
    with pytest.raises(ConfigError, match="reading it means unpickling it"):
        generator.generate(path)
    assert generator.generate(path, trusted=True)["data"]["filename"] == str(path)


# -- YAML with python tags ---------------------------------------------------------------------------------------
def _yaml_bomb(marker: Path) -> str:
    return f'species: !!python/object/apply:os.system ["touch {marker}"]\n'


def test_yaml_with_python_tags_is_refused_everywhere(tmp_path, pacemaker_code, emt_structures):
    marker = tmp_path / "pwned_yaml"
    text = _yaml_bomb(marker)
    with pytest.raises(ValueError, match="not valid YAML"):
        potential_info(text)
    assert is_finite_potential(text) is False
    with pytest.raises(ValueError, match="not valid YAML"):
        PotentialData(yace=RECORDED / "output_potential.yace", yaml=text.encode())
    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match=r"restart_potential: not a Pacemaker B-basis \.yaml"):
        run_get_node(
            PacemakerCalculation,
            code=pacemaker_code,
            training_set=TrainingSetData.from_ase(emt_structures),
            parameters=orm.Dict(FAST_PARAMETERS),
            restart_potential=orm.SinglefileData.from_string(text, filename="interim.yaml"),
        )
    assert orm.QueryBuilder().append(orm.Node).count() == before
    assert not marker.exists()
    with pytest.raises(yaml.constructor.ConstructorError):  # what the safe loader does with the tag
        yaml.safe_load(text)


# -- hostile strings never reach a shell -------------------------------------------------------------------------
def test_executable_settings_are_quoted_in_the_job_script(tmp_path):
    """`settings.yaml2yace_executable` / `python_executable` become one (missing) command word, nothing more."""
    payload = hostile(tmp_path)
    script = post_fit_script(payload, payload)
    for name in (files.OUTPUT_POTENTIAL_YAML, files.OUTPUT_POTENTIAL_YACE):
        (tmp_path / name).write_text("")  # so that both guarded lines run
    subprocess.run(["bash", "-c", "true\n" + script], cwd=tmp_path, check=False, capture_output=True)
    assert markers(tmp_path) == []
    log = (tmp_path / files.YAML2YACE_LOG).read_text()
    assert "No such file or directory" in log and payload.splitlines()[0] in log  # the whole payload: one word


@pytest.fixture(scope="module")
def python_code(local_computer):
    return orm.InstalledCode(label="python-untrusted", computer=local_computer, filepath_executable=sys.executable)


def _job_script(node) -> str:
    return node.base.repository.get_object_content("_aiidasubmit.sh")


def test_hostile_strings_in_a_real_labelling_job(tmp_path, python_code, emt_structures):
    """Label, description, calculator kwargs and the imported file's name all carry the payload; the job runs."""
    payload = hostile(tmp_path)
    source = tmp_path / "$(touch pwned_a);`touch pwned_b`|touch pwned_c.extxyz"  # relative: into the cwd
    from aiida_autopipec.learning.dataset import write_extxyz

    write_extxyz(source, emt_structures[:2])
    structures = TrainingSetData.from_file(source, labelled=False)
    results, node = run_get_node(
        AseLabelCalculation,
        code=python_code.store(),
        structures=structures,
        calculator=orm.Dict({"import_path": "ase.calculators.emt.EMT", "kwargs": {"label": payload}}),
        metadata={"label": hostile(None), "description": payload},
    )
    assert node.is_finished_ok, node.exit_message
    assert results["labelled"].num_structures == 2
    assert markers(tmp_path) == [] and markers(Path(node.get_remote_workdir())) == [] and markers(Path.cwd()) == []
    settings = json.loads(node.base.repository.get_object_content("label_input.json"))
    assert settings["calculator"]["kwargs"]["label"] == payload  # carried as data, not as code
    assert "touch" not in _job_script(node)


@pytest.mark.pacemaker
def test_hostile_strings_in_a_real_fit(tmp_path, pacemaker_code, emt_structures):
    """Label, description and free-form Pacemaker metadata carry the payload; the fit runs, nothing executes."""
    payload = hostile(tmp_path)
    _, node = run_get_node(
        PacemakerCalculation,
        code=pacemaker_code,
        training_set=TrainingSetData.from_ase(emt_structures),
        parameters=orm.Dict(FAST_PARAMETERS),
        settings=orm.Dict({"pacemaker": {"metadata": {"note": payload}}}),
        metadata={"label": hostile(None), "description": payload},
    )
    assert node.is_finished_ok, node.exit_message
    assert markers(tmp_path) == [] and markers(Path(node.get_remote_workdir())) == []
    config = yaml.safe_load(node.base.repository.get_object_content(files.INPUT_YAML))
    assert config["metadata"]["note"] == payload
    assert "touch" not in _job_script(node)


# -- overrides cannot leave the working directory ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"data": {"filename": "/etc/passwd"}}, "data.filename: cannot be overridden"),
        ({"data": {"test_filename": "../../other/test.pckl.gzip"}}, "data.test_filename: cannot be overridden"),
        ({"data": {"datapath": "/"}}, "data.datapath: cannot be overridden"),
        ({"potential": "/home/someone/potential.yaml"}, "potential: cannot be overridden by a file name"),
        ({"potential": {"filename": "/tmp/target.yaml"}}, "potential.filename: '/tmp/target.yaml' points outside"),
        ({"potential": {"initial_potential": "../x.yaml"}}, "potential.initial_potential: cannot be overridden"),
        ({"fit": {"callbacks": ["/tmp/evil.py"]}}, "fit.callbacks: cannot be overridden"),
        (
            {"fit": {"weighting": {"type": "ExternalWeightingPolicy", "filename_or_df": "w.pckl.gzip"}}},
            "ExternalWeightingPolicy loads a pickled file",
        ),
        ({"fit": {"weighting": {"filename": "/abs/weights"}}}, "fit.weighting.filename: '/abs/weights' points outside"),
        ({"fit": {"options": {"output_file": "../../../out"}}}, "fit.options.output_file: '../../../out' points"),
        ({"metadata": {"log_dir": "~/logs"}}, "metadata.log_dir: '~/logs' points outside"),
        ({"metadata": {"some_path": "C:\\temp"}}, "points outside the working directory"),
    ],
)
def test_overrides_cannot_point_outside_the_working_directory(overrides, message, pacemaker_code, emt_structures):
    with pytest.raises(ConfigError) as error:
        PacemakerConfigGenerator(SystemConfig(elements=["Al", "Cu"]), overrides)
    assert message in str(error.value)
    # The calculation refuses the same override before anything is stored.
    before = orm.QueryBuilder().append(orm.Node).count()
    with pytest.raises(ValueError, match=r"settings\.pacemaker"):
        run_get_node(
            PacemakerCalculation,
            code=pacemaker_code,
            training_set=TrainingSetData.from_ase(emt_structures),
            parameters=orm.Dict(FAST_PARAMETERS),
            settings=orm.Dict({"pacemaker": overrides}),
        )
    assert orm.QueryBuilder().append(orm.Node).count() == before


def test_relative_names_in_free_mappings_are_allowed():
    generator = PacemakerConfigGenerator(SystemConfig(elements=["Al", "Cu"]), {"metadata": {"source_file": "a.xyz"}})
    assert generator.overrides["metadata"]["source_file"] == "a.xyz"
