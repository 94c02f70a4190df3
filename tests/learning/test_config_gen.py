"""Tests of :mod:`aiida_autopipec.learning.config_gen`: the generated Pacemaker ``input.yaml``.

The unit tests check the dict that :class:`PacemakerConfigGenerator` builds and its checks of overrides.
Pacemaker silently ignores keys it does not know, so the tests marked ``pacemaker`` go further: they run the
installed python-ace on a generated input (one real 1-iteration fit and one dry run for the whole module) and
read Pacemaker's own ``log.txt`` and ``target_potential.yaml`` to prove that every value written takes effect.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from aiida_autopipec.config import SystemConfig
from aiida_autopipec.learning import files
from aiida_autopipec.learning.config_gen import (
    ConfigError,
    PacemakerConfigGenerator,
    deep_merge,
    number_of_functions_per_element,
)
from aiida_autopipec.learning.dataset import StructureArrays, fit_reference_energies, write_pacemaker_dataset
from aiida_autopipec.learning.reference_data import emt_dataset

ELEMENTS = ["Al", "Cu"]


def generate(overrides=None, *, elements=ELEMENTS, num_structures=50, num_atoms=400, **training):
    """input.yaml content for ``training`` settings (data size given, so no dataset file is needed)."""
    generator = PacemakerConfigGenerator(SystemConfig(elements=elements, **training), overrides)
    return generator.generate(
        files.TRAINING_DATA, num_structures=num_structures, num_atoms=num_atoms, shortest_distances={}
    )


def write_emt_dataset(path: Path, num_structures: int, seed: int, references=None) -> dict[str, float]:
    """Write EMT-labelled Al-Cu data as Pacemaker's dataset; returns the reference energies used (eV/atom)."""
    arrays = StructureArrays.from_atoms(emt_dataset(num_structures, seed=seed))
    references = references or fit_reference_energies(arrays, ELEMENTS)
    write_pacemaker_dataset(path, arrays, references)
    return references


# == unit tests of generate() ================================================================================


def test_cutoff_goes_into_bonds_all_rcut_and_nowhere_else():
    config = generate(cutoff=4.3)
    assert config["potential"]["bonds"]["ALL"]["rcut"] == 4.3
    assert "cutoff" not in config  # a top-level 'cutoff' is ignored by Pacemaker
    assert "cutoff" not in config["potential"]


def test_elements_go_into_potential():
    assert generate(elements=["Cu", "Al"])["potential"]["elements"] == ["Cu", "Al"]
    assert generate(elements=["Ni"])["potential"]["elements"] == ["Ni"]


def test_loss_settings():
    loss = generate(kappa=0.83, l1_regularization=2e-7, l2_regularization=3e-6)["fit"]["loss"]
    assert loss == {"kappa": 0.83, "L1_coeffs": 2e-7, "L2_coeffs": 3e-6}


def test_optimizer_maxiter_and_seed():
    config = generate(optimizer="L-BFGS-B", maxiter=123, seed=11)
    assert config["fit"]["optimizer"] == "L-BFGS-B"
    assert config["fit"]["maxiter"] == 123
    assert config["seed"] == 11


def test_test_size_is_written_without_test_set():
    data = generate(test_size=0.25)["data"]
    assert data == {"filename": files.TRAINING_DATA, "test_size": 0.25}


def test_test_filename_replaces_test_size_with_test_set():
    generator = PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS, test_size=0.25))
    data = generator.generate(
        Path(files.TRAINING_DATA),
        test_dataset_path=Path(files.TEST_DATA),
        num_structures=50,
        num_atoms=400,
        shortest_distances={},
    )["data"]
    assert data == {"filename": files.TRAINING_DATA, "test_filename": files.TEST_DATA}
    assert all(isinstance(value, str) for value in data.values())


def test_backend_settings():
    backend = generate(batch_size=17, batch_size_reduction=False, display_step=3)["backend"]
    assert backend["evaluator"] == "tensorpot"
    assert backend["batch_size"] == 17
    assert backend["batch_size_reduction"] is False
    assert backend["display_step"] == 3


@pytest.mark.parametrize(
    ("training", "gpu_config"),
    [
        ({"device": "cpu"}, {"gpu_ind": -1, "mem_limit": 0}),
        ({"device": "gpu"}, {"gpu_ind": 0, "mem_limit": 0}),
        ({"device": "gpu", "gpu_memory_limit": 8192}, {"gpu_ind": 0, "mem_limit": 8192}),
    ],
)
def test_gpu_config_follows_device(training, gpu_config):
    assert generate(**training)["backend"]["gpu_config"] == gpu_config


def test_auto_device_writes_no_gpu_config():
    assert "gpu_config" not in generate(device="auto")["backend"]


def test_warm_start_writes_potential_file_name():
    generator = PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS, number_of_functions_per_element=8))
    config = generator.generate(
        files.TRAINING_DATA, initial_potential_path=Path(files.INITIAL_POTENTIAL), shortest_distances={}
    )
    assert config["potential"] == files.INITIAL_POTENTIAL
    assert isinstance(config["potential"], str)
    assert config["fit"]["loss"]["kappa"] == 0.7  # the rest is generated as usual


def test_warm_start_rejects_basis_overrides_but_keeps_others():
    config = SystemConfig(elements=ELEMENTS, number_of_functions_per_element=8)
    generator = PacemakerConfigGenerator(config, {"potential": {"bonds": {"ALL": {"rcut": 4.0}}}})
    with pytest.raises(ConfigError, match="potential: overrides of the basis cannot be combined"):
        generator.generate(files.TRAINING_DATA, initial_potential_path=files.INITIAL_POTENTIAL, shortest_distances={})
    generator = PacemakerConfigGenerator(config, {"fit": {"loss": {"w0_rad": 1e-4}}})
    merged = generator.generate(
        files.TRAINING_DATA, initial_potential_path=files.INITIAL_POTENTIAL, shortest_distances={}
    )
    assert merged["fit"]["loss"]["w0_rad"] == 1e-4


# -- automatic basis size ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_structures", "num_atoms", "num_elements", "maximum", "expected"),
    [
        (10, 80, 2, 300, 6),  # (10 + 240) / (10 * 2 * 2) = 6.25 -> 6, a multiple of the 2 blocks per element
        (100, 400, 1, 300, 65),  # (100 + 1200) / (10 * 2 * 1) = 65 (one block per element)
        (1, 4, 2, 300, 4),  # 13 / 40 -> clipped up to 5 -> 4 (multiple of 2 blocks)
        (1000, 8000, 2, 300, 300),  # 625 -> clipped to the maximum
        (1000, 8000, 2, 51, 50),  # 51 -> 50 (multiple of 2 blocks)
        (1, 4, 4, 300, 8),  # 4 elements: 8 blocks per element, at least one function each
        (100, 6400, 3, 302, 300),  # (100 + 19200) / 60 = 321 -> 302 -> 300, a multiple of 4 blocks
    ],
)
def test_number_of_functions_per_element_rule(num_structures, num_atoms, num_elements, maximum, expected):
    assert number_of_functions_per_element(num_structures, num_atoms, num_elements, maximum) == expected


def test_number_of_functions_per_element_grows_with_data_and_stays_clipped():
    sizes = [number_of_functions_per_element(n, 8 * n, 2, maximum=120) for n in (1, 10, 50, 100, 200, 400, 1000)]
    assert sizes == sorted(sizes)
    assert sizes[0] == 4  # the minimum of 5, rounded down to a multiple of the 2 blocks per element
    assert sizes[-1] == 120
    assert len(set(sizes)) > 3


def test_automatic_basis_size_uses_the_data_size():
    def functions(**kwargs):
        return generate(**kwargs)["potential"]["functions"]["number_of_functions_per_element"]

    assert functions(num_structures=10, num_atoms=80) == 6
    assert functions(num_structures=200, num_atoms=1600) == (200 + 4800) // 40 // 2 * 2
    assert functions(num_structures=1000, num_atoms=8000, max_functions_per_element=77) == 76
    assert functions(num_structures=2, num_atoms=4, test_size=0.5) == 4


def test_automatic_basis_size_reads_the_dataset_file(tmp_path):
    path = tmp_path / files.TRAINING_DATA
    write_emt_dataset(path, 12, seed=3)  # 12 structures of 8 atoms: (12 + 3 * 96) / 40 = 7.5 -> 6 (2 blocks)
    config = PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS)).generate(path, trusted=True)  # our pickle
    assert config["potential"]["functions"]["number_of_functions_per_element"] == 6
    assert config["data"]["filename"] == str(path)


def test_too_few_functions_for_the_blocks_is_rejected():
    # 3 elements: 4 basis blocks per element; 3 functions would leave blocks empty.
    generator = PacemakerConfigGenerator(SystemConfig(elements=["Al", "Cu", "Ni"], number_of_functions_per_element=3))
    with pytest.raises(ConfigError, match="fewer than the 4 basis blocks"):
        generator.generate(files.TRAINING_DATA, num_structures=20, num_atoms=160, shortest_distances={})


@pytest.mark.parametrize(("num_structures", "test_size"), [(8, 0.1), (3, 0.2), (10, 0.05)])
def test_test_split_that_holds_out_nothing_is_rejected(num_structures, test_size):
    generator = PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS, test_size=test_size))
    with pytest.raises(ConfigError, match="holds out 0"):
        generator.generate(
            files.TRAINING_DATA, num_structures=num_structures, num_atoms=8 * num_structures, shortest_distances={}
        )


def test_explicit_number_of_functions_wins():
    config = generate(number_of_functions_per_element=11, num_structures=1000, num_atoms=8000)
    assert config["potential"]["functions"]["number_of_functions_per_element"] == 11
    # no data size needed at all when the basis size is given
    generator = PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS, number_of_functions_per_element=11))
    assert (
        generator.generate("missing.pckl.gzip", shortest_distances={})["potential"]["functions"][
            "number_of_functions_per_element"
        ]
        == 11
    )


def test_automatic_basis_size_without_data_size_is_an_error():
    generator = PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS))
    with pytest.raises(ConfigError, match="number_of_functions_per_element is automatic"):
        generator.functions_per_element(None, None)


# -- overrides -----------------------------------------------------------------------------------------------


def test_deep_merge_merges_nested_mappings_and_keeps_other_keys():
    base = {"fit": {"loss": {"kappa": 0.5, "L1_coeffs": 1e-8}, "maxiter": 10}, "seed": 1}
    merged = deep_merge(base, {"fit": {"loss": {"kappa": 0.9}}, "backend": {"batch_size": 5}})
    assert merged == {
        "fit": {"loss": {"kappa": 0.9, "L1_coeffs": 1e-8}, "maxiter": 10},
        "seed": 1,
        "backend": {"batch_size": 5},
    }
    assert base["fit"]["loss"]["kappa"] == 0.5  # the base is not modified


def test_deep_merge_replaces_non_mappings():
    assert deep_merge({"a": {"b": 1}}, {"a": 2}) == {"a": 2}
    assert deep_merge({"a": 2}, {"a": {"b": 1}}) == {"a": {"b": 1}}
    assert deep_merge({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}


def test_overrides_are_deep_merged_into_the_generated_config():
    config = generate(
        {
            "fit": {"loss": {"w0_rad": 1e-4}, "maxiter": 7},
            "backend": {"batch_size": 5},
            "potential": {"bonds": {"ALL": {"dcut": 0.02}}},
        },
        kappa=0.83,
        cutoff=4.3,
    )
    assert config["fit"]["loss"] == {"kappa": 0.83, "L1_coeffs": 1e-8, "L2_coeffs": 1e-8, "w0_rad": 1e-4}
    assert config["fit"]["maxiter"] == 7
    assert config["backend"]["batch_size"] == 5
    assert config["backend"]["evaluator"] == "tensorpot"
    assert config["potential"]["bonds"]["ALL"]["dcut"] == 0.02
    assert config["potential"]["bonds"]["ALL"]["rcut"] == 4.3
    assert config["potential"]["bonds"]["ALL"]["radbase"] == "SBessel"


def test_generated_configs_share_no_state_with_the_overrides():
    overrides = {"fit": {"loss": {"w0_rad": 1e-4}}}
    generator = PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS, number_of_functions_per_element=8), overrides)
    first = generator.generate(files.TRAINING_DATA, shortest_distances={})
    first["fit"]["loss"]["w0_rad"] = 1.0
    first["potential"]["bonds"]["ALL"]["rcut"] = 1.0
    second = generator.generate(files.TRAINING_DATA, shortest_distances={})
    assert second["fit"]["loss"]["w0_rad"] == 1e-4
    assert second["potential"]["bonds"]["ALL"]["rcut"] == 5.0
    assert overrides == {"fit": {"loss": {"w0_rad": 1e-4}}}


@pytest.mark.parametrize(
    ("overrides", "where", "suggestion"),
    [
        ({"fit": {"loss": {"kapa": 0.9}}}, "fit.loss.kapa", "kappa"),
        ({"data": {"test_sizee": 0.2}}, "data.test_sizee", "test_size"),
        ({"backend": {"evaluater": "tensorpot"}}, "backend.evaluater", "evaluator"),
        ({"potential": {"bonds": {"ALL": {"rcutt": 4.0}}}}, "potential.bonds.ALL.rcutt", "rcut"),
        (
            {"potential": {"functions": {"ALL": {"lmax_by_order": [0, 1]}}}},
            "potential.functions.ALL.lmax_by_order",
            "lmax_by_orders",
        ),
        ({"fit": {"maxitr": 5}}, "fit.maxitr", "maxiter"),
        ({"backnd": {"batch_size": 5}}, "backnd", "backend"),
    ],
)
def test_misspelt_override_keys_are_rejected_with_a_hint(overrides, where, suggestion):
    with pytest.raises(ConfigError) as error:
        PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS), overrides)
    message = str(error.value)
    assert message.startswith(f"{where}: unknown key")
    assert "Pacemaker would silently ignore it" in message
    assert f"did you mean '{suggestion}'?" in message


def test_top_level_cutoff_override_is_rejected():
    with pytest.raises(ConfigError, match=r"^cutoff: unknown key 'cutoff' \(Pacemaker would silently ignore it\)"):
        PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS), {"cutoff": 4.0})


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"data": {"filename": "other.pckl.gzip"}}, "data.filename"),
        ({"data": {"test_filename": "other.pckl.gzip"}}, "data.test_filename"),
        ({"potential": {"elements": ["Al"]}}, "potential.elements"),
        ({"potential": {"initial_potential": "old.yaml"}}, "potential.initial_potential"),
        ({"fit": {"callbacks": ["evil.module.function"]}}, "fit.callbacks"),
        ({"data": {"datapath": "/tmp"}}, "data.datapath"),
        ({"data": {"reference_energy": {"Al": -3.0}}}, "data.reference_energy"),
    ],
)
def test_managed_keys_cannot_be_overridden(overrides, where):
    with pytest.raises(ConfigError, match=rf"^{re.escape(where)}: cannot be overridden \("):
        PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS), overrides)


def test_potential_cannot_be_overridden_by_a_file_name():
    with pytest.raises(ConfigError, match="potential: cannot be overridden by a file name"):
        PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS), {"potential": "old.yaml"})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fit": {"maxiter": -1}}, "fit.maxiter: must be a positive integer, got -1"),
        ({"fit": {"maxiter": 0}}, "fit.maxiter: must be a positive integer, got 0"),
        ({"fit": {"maxiter": 2.5}}, "fit.maxiter: must be a positive integer, got 2.5"),
        ({"fit": {"optimizer": "FOO"}}, "fit.optimizer: 'FOO' is not one of"),
        ({"fit": {"loss": {"kappa": 2}}}, "fit.loss.kappa: must be 'auto' or a number in [0, 1], got 2"),
        ({"fit": {"loss": {"kappa": -0.1}}}, "fit.loss.kappa: must be 'auto' or a number in [0, 1]"),
        ({"fit": {"loss": {"kappa": "high"}}}, "fit.loss.kappa: must be 'auto' or a number in [0, 1]"),
        (
            {"potential": {"bonds": {"ALL": {"rcut": 0}}}},
            "potential.bonds.ALL.rcut: must be a positive number",
        ),
        (
            {"potential": {"bonds": {"AlCu": {"rcut": -4.0}}}},
            "potential.bonds.AlCu.rcut: must be a positive number",
        ),
        (
            {"potential": {"bonds": {"ALL": {"rcut": math.nan}}}},
            "potential.bonds.ALL.rcut: must be a positive",
        ),
        ({"backend": {"batch_size": 0}}, "backend.batch_size: must be a positive integer"),
        ({"backend": {"display_step": -3}}, "backend.display_step: must be a positive integer"),
        (
            {"data": {"test_size": 0}},
            "data.test_size: must be a fraction in (0, 1) or a number of structures",
        ),
        ({"data": {"test_size": 1.5}}, "data.test_size: must be a fraction in (0, 1)"),
        (
            {"potential": {"functions": {"number_of_functions_per_element": 0}}},
            "number_of_functions_per_element",
        ),
        ({"fit": {"weighting": "energy"}}, "fit.weighting: expected a mapping, got 'energy'"),
    ],
)
def test_bad_override_values_are_rejected(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        generate(overrides)


@pytest.mark.parametrize(
    "overrides",
    [
        {"fit": {"loss": {"kappa": "auto"}}},
        {"fit": {"loss": {"kappa": 0}}},
        {"fit": {"optimizer": "Adam"}},
        {"data": {"test_size": 5}},  # a number of structures
        {"fit": {"weighting": {"type": "EnergyBasedWeightingPolicy", "DElow": 1.0}}},
        {"metadata": {"comment": "anything goes here"}},
    ],
)
def test_good_override_values_are_accepted(overrides):
    config = generate(overrides)
    section, value = next(iter(overrides.items()))
    assert deep_merge(config[section], value) == config[section]


@pytest.mark.parametrize("key", ["AlCu", "Al Cu", "CuAl", "Al", "[Al, Cu]", "UNARY", "BINARY"])
def test_per_pair_bond_keys_are_accepted(key):
    config = generate({"potential": {"bonds": {key: {"rcut": 4.6}}}}, cutoff=4.3)
    assert config["potential"]["bonds"][key]["rcut"] == 4.6  # merged with the repulsion core of that pair, if any
    assert config["potential"]["bonds"]["ALL"]["rcut"] == 4.3


@pytest.mark.parametrize("key", ["Foo", "AlXx", "alcu", "Al-Cu", "ALL_PAIRS", ""])
def test_nonsense_species_keys_are_rejected(key):
    with pytest.raises(ConfigError, match=r"is not honoured here"):
        PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS), {"potential": {"bonds": {key: {"rcut": 4.6}}}})


@pytest.mark.parametrize(
    ("section", "key", "block"),
    [
        # Pacemaker silently ignores ternary bonds and rejects pair embeddings.
        ("bonds", "TERNARY", {"rcut": 4.0}),
        ("bonds", "AlCuAl", {"rcut": 4.0}),
        ("embeddings", "BINARY", {"ndensity": 1}),
        ("embeddings", "AlCu", {"ndensity": 1}),
    ],
)
def test_species_keys_pacemaker_ignores_in_a_section_are_rejected(section, key, block):
    with pytest.raises(ConfigError, match=rf"potential\.{section}\.{key}: .* is not honoured here"):
        PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS), {"potential": {section: {key: block}}})


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [("bonds", "rcut", 4.0), ("embeddings", "ndensity", 1), ("functions", "lmax_by_orders", [0, 1])],
)
def test_block_keys_without_species_level_are_rejected(section, key, value):
    # Pacemaker reads e.g. bonds.rcut as a species key and fails (KeyError: ()) or misreads it.
    with pytest.raises(ConfigError, match=rf"potential\.{section}\.{key}: .*put '{key}' under ALL"):
        PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS), {"potential": {section: {key: value}}})


def test_per_species_blocks_are_checked_against_their_schema():
    overrides = {"potential": {"bonds": {"AlCu": {"rcutt": 4.6}}}}
    with pytest.raises(ConfigError, match=r"potential\.bonds\.AlCu\.rcutt: unknown key .*did you mean 'rcut'"):
        PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS), overrides)
    overrides = {"potential": {"functions": {"AlCu": {"number_of_functions_per_element": 3}}}}
    with pytest.raises(ConfigError, match=r"potential\.functions\.AlCu\.number_of_functions_per_element: unknown"):
        PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS), overrides)


# -- YAML ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "training",
    [
        {},
        {"device": "gpu", "gpu_memory_limit": 2048, "cutoff": 6.5, "kappa": 0.0},
        {"device": "cpu", "reference_energies": {"Al": -3.1, "Cu": -3.6}},
    ],
)
def test_generated_config_is_safe_yaml_and_round_trips(tmp_path, training):
    config = generate({"potential": {"bonds": {"Al Cu": {"rcut": 4.6}}}}, **training)
    assert yaml.safe_load(yaml.safe_dump(config)) == config
    path = PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS)).write(tmp_path / files.INPUT_YAML, config)
    text = path.read_text()
    assert "!!" not in text  # plain types only: no python/object or numpy tags
    assert yaml.safe_load(text) == config
    assert list(yaml.safe_load(text)) == list(config)  # key order kept


def test_warm_start_config_is_safe_yaml():
    generator = PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS, number_of_functions_per_element=8))
    config = generator.generate(
        Path(files.TRAINING_DATA), initial_potential_path=Path(files.INITIAL_POTENTIAL), shortest_distances={}
    )
    assert yaml.safe_load(yaml.safe_dump(config)) == config


def test_pacemaker_reads_number_of_functions_per_element_as_an_upper_bound():
    """In python-ace 0.4 the basis gets ``n * nelements // nblocks`` functions in each species block.

    So with two elements (4 blocks: Al, Cu, Al-Cu, Cu-Al) an odd ``n`` is rounded down to an even one. Checked
    here with Pacemaker's own basis construction (in process, no fit).
    """
    from pyace.multispecies_basisextension import construct_bbasisconfiguration

    totals = {}
    for n in (5, 7, 8, 20):
        potential = generate(number_of_functions_per_element=n)["potential"]
        basis = construct_bbasisconfiguration(potential)
        assert len(basis.funcspecs_blocks) == 4
        totals[n] = basis.total_number_of_functions
    assert totals == {5: 8, 7: 12, 8: 16, 20: 40}


# == schema drift: the real Pacemaker reads every value ======================================================

FIT_TRAINING = {
    "cutoff": 4.3,
    "number_of_functions_per_element": 8,  # even: two elements give 4 blocks, so 8 is honoured exactly
    "kappa": 0.83,
    "l1_regularization": 2e-7,
    "l2_regularization": 3e-6,
    "optimizer": "L-BFGS-B",  # not the default: its stop message proves the choice reached scipy
    "maxiter": 1,
    "test_size": 0.25,
    "seed": 11,
    "batch_size": 17,
    "display_step": 1,
    "device": "cpu",
}
PAIR_RCUT = 4.1  # per-pair override below the cutoff, so the neighbour-list cutoff is still the cutoff


@dataclass
class PacemakerRun:
    directory: Path
    config: dict
    log: str
    stdout: str

    def read_yaml(self, name: str) -> dict:
        return yaml.safe_load((self.directory / name).read_text())

    def log_line(self, start: str) -> str:
        """The first log message that starts with ``start`` (timestamp and level stripped)."""
        for line in self.log.splitlines():
            message = line.split(" - ", 1)[-1]
            if message.startswith(start):
                return message
        raise AssertionError(f"no log line starts with {start!r}; log.txt:\n{self.log}")


def run_pacemaker(directory: Path, *arguments: str) -> PacemakerRun:
    executable = shutil.which("pacemaker")
    assert executable, "the pacemaker executable of python-ace is not on PATH"
    completed = subprocess.run(
        [executable, *arguments, files.INPUT_YAML],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, f"pacemaker failed ({completed.returncode}):\n{output[-5000:]}"
    config = yaml.safe_load((directory / files.INPUT_YAML).read_text())
    return PacemakerRun(directory, config, (directory / files.LOG).read_text(), output)


@pytest.fixture(scope="module")
def pacemaker_fit(tmp_path_factory) -> PacemakerRun:
    """A real 1-iteration fit of 12 EMT structures with distinctive values for every generated setting."""
    directory = tmp_path_factory.mktemp("pacemaker_fit")
    write_emt_dataset(directory / files.TRAINING_DATA, 12, seed=3)
    overrides = {"potential": {"bonds": {"AlCu": {"rcut": PAIR_RCUT}}}}
    generator = PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS, **FIT_TRAINING), overrides)
    generator.write(directory / files.INPUT_YAML, generator.generate(files.TRAINING_DATA, shortest_distances={}))
    return run_pacemaker(directory)


@pytest.fixture(scope="module")
def pacemaker_warm_dry_run(pacemaker_fit, tmp_path_factory) -> PacemakerRun:
    """``pacemaker --dry-run`` of a warm start from the fitted potential, with a separate test set."""
    directory = tmp_path_factory.mktemp("pacemaker_warm")
    shutil.copy(pacemaker_fit.directory / files.OUTPUT_POTENTIAL_YAML, directory / files.INITIAL_POTENTIAL)
    references = write_emt_dataset(directory / files.TRAINING_DATA, 12, seed=3)
    write_emt_dataset(directory / files.TEST_DATA, 5, seed=5, references=references)
    generator = PacemakerConfigGenerator(SystemConfig(elements=ELEMENTS, device="cpu", test_size=0.25))
    config = generator.generate(
        files.TRAINING_DATA,
        test_dataset_path=files.TEST_DATA,
        initial_potential_path=files.INITIAL_POTENTIAL,
        num_structures=12,  # the relative data path is not readable from here; the size is unused anyway
        num_atoms=96,
        shortest_distances={},
    )
    generator.write(directory / files.INPUT_YAML, config)
    return run_pacemaker(directory, "--dry-run")


def species_blocks(potential: dict) -> dict[str, dict]:
    return {block["speciesblock"]: block for block in potential["species"]}


@pytest.mark.pacemaker
def test_fit_input_is_what_the_generator_wrote(pacemaker_fit):
    assert pacemaker_fit.config["potential"]["bonds"]["ALL"]["rcut"] == 4.3
    assert pacemaker_fit.config["potential"]["bonds"]["AlCu"]["rcut"] == PAIR_RCUT
    assert "cutoff" not in pacemaker_fit.config


@pytest.mark.pacemaker
def test_repulsion_core_per_pair_takes_effect(pacemaker_fit):
    """Default baseline core_repulsion: the per-pair ZBL core lands in Pacemaker's basis for every pair."""
    blocks = species_blocks(pacemaker_fit.read_yaml(files.TARGET_POTENTIAL))
    bonds = pacemaker_fit.config["potential"]["bonds"]
    for block_name, bond_key in (("Al", "AlAl"), ("Cu", "CuCu"), ("Al Cu", "AlCu"), ("Cu Al", "AlCu")):
        block, bond = blocks[block_name], bonds[bond_key]
        assert block["inner_cutoff_type"] == "zbl"
        assert block["r_in"] == pytest.approx(bond["r_in"])
        assert block["delta_in"] == pytest.approx(bond["delta_in"])
        assert block["core-repulsion"] == [1, 1]


@pytest.mark.pacemaker
def test_pacemaker_builds_blocks_for_the_elements(pacemaker_fit):
    blocks = species_blocks(pacemaker_fit.read_yaml(files.TARGET_POTENTIAL))
    assert set(blocks) == {"Al", "Cu", "Al Cu", "Cu Al"}


@pytest.mark.pacemaker
def test_pacemaker_uses_the_cutoff(pacemaker_fit):
    blocks = species_blocks(pacemaker_fit.read_yaml(files.TARGET_POTENTIAL))
    assert blocks["Al"]["rcutij"] == 4.3
    assert blocks["Cu"]["rcutij"] == 4.3
    line = pacemaker_fit.log_line("Cutoff for neighbour lists construction is deduced from the potential:")
    assert line.startswith("Cutoff for neighbour lists construction is deduced from the potential: 4.300 A")
    assert "Building 'tp_atoms' (dataset size 12, cutoff=4.300A)" in pacemaker_fit.log


@pytest.mark.pacemaker
def test_pacemaker_uses_the_per_pair_bond_override(pacemaker_fit):
    blocks = species_blocks(pacemaker_fit.read_yaml(files.TARGET_POTENTIAL))
    assert blocks["Al Cu"]["rcutij"] == PAIR_RCUT
    assert blocks["Cu Al"]["rcutij"] == PAIR_RCUT  # 'AlCu' applies to both orders
    assert blocks["Al Cu"]["radbase"] == "SBessel"  # and is merged onto ALL, not replacing it


@pytest.mark.pacemaker
def test_pacemaker_uses_the_number_of_functions_per_element(pacemaker_fit):
    blocks = species_blocks(pacemaker_fit.read_yaml(files.TARGET_POTENTIAL))
    per_element = {element: 0 for element in ELEMENTS}
    for name, block in blocks.items():
        per_element[name.split()[0]] += len(block.get("nbody", []))  # a block belongs to its central element
    assert per_element == {"Al": 8, "Cu": 8}
    assert re.search(
        r"Number of functions in target potential is limited to maximum 8 functions per element\s+"
        r"for 2 elements \(4 blocks\)",
        pacemaker_fit.log,
    )
    assert pacemaker_fit.log_line("Resulted potential contains") == "Resulted potential contains 16 functions"
    assert pacemaker_fit.log_line("Total number of functions:").startswith("Total number of functions: 16 /")


@pytest.mark.pacemaker
def test_pacemaker_uses_the_embedding_and_radial_basis(pacemaker_fit):
    potential = pacemaker_fit.read_yaml(files.TARGET_POTENTIAL)
    assert potential["global"]["DeltaSplineBins"] == 0.001
    blocks = species_blocks(potential)
    for element in ELEMENTS:
        block = blocks[element]
        assert block["ndensityi"] == 2
        assert block["npoti"] == "FinnisSinclairShiftedScaled"
        assert block["parameters"] == [1, 1, 1, 0.5]
    for block in blocks.values():
        assert block["radbase"] == "SBessel"
        assert block["radparameters"] == [5.25]
        assert block["dcutij"] == 0.01
        assert block["NameOfCutoffFunctionij"] == "cos"


@pytest.mark.pacemaker
def test_pacemaker_splits_out_the_test_set(pacemaker_fit):
    assert pacemaker_fit.log_line("Splitting out test dataset") == (
        "Splitting out test dataset (test_size = 0.25) from main dataset(12 samples)"
    )
    assert pacemaker_fit.log_line("Fitting dataset size:") == "Fitting dataset size: 9 structures / 72 atoms"
    assert pacemaker_fit.log_line("Test dataset size:") == "Test dataset size: 3 structures / 24 atoms"


@pytest.mark.pacemaker
def test_pacemaker_uses_the_seed(pacemaker_fit):
    assert pacemaker_fit.log_line("Set numpy random seed to") == "Set numpy random seed to 11"


@pytest.mark.pacemaker
def test_pacemaker_uses_the_loss_settings(pacemaker_fit):
    line = pacemaker_fit.log_line("Loss function specification:")
    assert "LossFunctionSpecification(kappa=0.83, L1=2e-07, L2=3e-06," in line


@pytest.mark.pacemaker
def test_pacemaker_uses_the_batch_size(pacemaker_fit):
    assert pacemaker_fit.log_line("Batch size:") == "Batch size: 17"


@pytest.mark.pacemaker
def test_pacemaker_uses_the_optimizer_and_maxiter(pacemaker_fit):
    assert "'maxiter': 1}" in pacemaker_fit.log_line("Minimizer options:")
    result = pacemaker_fit.log_line("Optimization result(")
    # scipy's L-BFGS-B message; BFGS would say 'Maximum number of iterations has been exceeded.'
    assert "message=STOP: TOTAL NO. OF ITERATIONS REACHED LIMIT" in result


@pytest.mark.pacemaker
def test_pacemaker_uses_the_display_step(pacemaker_fit):
    # With display_step 1 iteration #1 gets the extended 'FIT STATS' table (Pacemaker's default is 20).
    assert re.search(r"-+FIT STATS-+\nIteration:\s+#1\b", pacemaker_fit.log)


@pytest.mark.pacemaker
def test_pacemaker_fit_writes_the_output_potential(pacemaker_fit):
    potential = pacemaker_fit.read_yaml(files.OUTPUT_POTENTIAL_YAML)
    assert {block["speciesblock"] for block in potential["species"]} == {"Al", "Cu", "Al Cu", "Cu Al"}


@pytest.mark.pacemaker
def test_pacemaker_warm_starts_from_the_potential_file(pacemaker_warm_dry_run, pacemaker_fit):
    assert pacemaker_warm_dry_run.config["potential"] == files.INITIAL_POTENTIAL
    assert pacemaker_warm_dry_run.log_line("Target potential loaded from file") == (
        f"Target potential loaded from file '{files.INITIAL_POTENTIAL}', it contains 16 functions"
    )
    assert "Target potential shape constructed from dictionary" not in pacemaker_warm_dry_run.log

    def coefficients(potential):
        return {
            (block["speciesblock"], index): function["c"]
            for block in potential["species"]
            for index, function in enumerate(block.get("nbody", []))
        }

    initial = coefficients(pacemaker_fit.read_yaml(files.OUTPUT_POTENTIAL_YAML))
    target = coefficients(pacemaker_warm_dry_run.read_yaml(files.TARGET_POTENTIAL))
    assert target == initial  # the fitted coefficients are the starting point
    assert any(value != 0 for values in initial.values() for value in values)
    line = pacemaker_warm_dry_run.log_line("Cutoff for neighbour lists construction")
    assert "4.300 A" in line  # the cutoff comes from the file, not from the (default 5.0) SystemConfig


@pytest.mark.pacemaker
def test_pacemaker_uses_the_separate_test_set(pacemaker_warm_dry_run):
    log = pacemaker_warm_dry_run.log
    assert f"Search for dataset file(s): ['{files.TEST_DATA}']" in log
    assert f"Loading dataframe from pickle file {files.TEST_DATA}" in log
    assert "Building 'tp_atoms' (dataset size 5, cutoff=4.300A)" in log
    assert "Splitting out test dataset" not in log
    assert "test_size" not in pacemaker_warm_dry_run.config["data"]
    assert pacemaker_warm_dry_run.log_line("Dry run is finished") == "Dry run is finished"
