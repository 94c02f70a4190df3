"""Reproducibility on CPU: the same data, settings and seed give bit-identical potential coefficients.

Three real fits: two with seed 42 (must agree byte for byte), one with seed 7 (must differ, so the comparison can
fail: the seed also draws the train/test split).
"""

from __future__ import annotations

import pytest
import yaml

from aiida_autopipec.config import SystemConfig
from aiida_autopipec.learning import files
from aiida_autopipec.learning.config_gen import PacemakerConfigGenerator
from aiida_autopipec.learning.pacemaker import PacemakerRunner
from tests.conftest import FAST_PARAMETERS

pytestmark = pytest.mark.pacemaker


def fit(work_dir, structures, seed: int) -> tuple[bytes, list, bytes]:
    """(.yace bytes, parsed B-basis species blocks, raw species section of the .yaml) of one real fit."""
    config = SystemConfig(elements=["Al", "Cu"], training={**FAST_PARAMETERS, "seed": seed})
    runner = PacemakerRunner(PacemakerConfigGenerator(config), work_dir)
    yace = runner.train(structures).read_bytes()
    text = (runner.work_dir / files.OUTPUT_POTENTIAL_YAML).read_text()
    species_section = text[text.index("\nspecies:") :].encode()
    return yace, yaml.safe_load(text)["species"], species_section


@pytest.fixture(scope="module")
def fits(tmp_path_factory, emt_structures):
    return {
        name: fit(tmp_path_factory.mktemp(name), emt_structures, seed)
        for name, seed in (("first", 42), ("again", 42), ("other_seed", 7))
    }


def test_same_seed_gives_bit_identical_coefficients(fits):
    first, again = fits["first"], fits["again"]
    assert first[0] == again[0]  # the whole .yace, reference energies in E0 included
    assert first[2] == again[2]  # the B-basis coefficients as written
    assert first[1] == again[1]  # and as numbers (exact float equality)


def test_a_different_seed_gives_different_coefficients(fits):
    assert fits["first"][0] != fits["other_seed"][0]
    assert fits["first"][1] != fits["other_seed"][1]
