"""``autopipec``: the command group (profile, version, one-line user errors), ``setup`` and ``quickstart``."""

from __future__ import annotations

import shutil
import subprocess

import click

from aiida_autopipec import __version__
from aiida_autopipec.cli.errors import user_errors_as_one_line

#: Profile chosen with ``autopipec --profile NAME`` (None: AiiDA's default profile).
PROFILE_OPTION = "profile"


def selected_profile() -> str | None:
    """The ``--profile`` given to the ``autopipec`` group of the running command, if any."""
    context = click.get_current_context(silent=True)
    return context.find_root().params.get(PROFILE_OPTION) if context is not None else None


def load_or_create_profile(create: bool = True) -> str:
    """Load the profile of ``--profile`` or the default one; without any profile, make one with ``verdi presto``."""
    from aiida import load_profile
    from aiida.common.exceptions import ConfigurationError, ProfileConfigurationError
    from aiida.manage.configuration import get_config

    name = selected_profile()
    if name is not None:
        try:
            available = get_config(create=True).profile_names
        except ConfigurationError:
            available = []
        if name not in available:
            listed = ", ".join(available) or "none"
            raise click.ClickException(f"no AiiDA profile '{name}' (profiles: {listed}; see `verdi profile list`)")
        return load_profile(name, allow_switch=True).name
    try:
        return load_profile().name
    except (ConfigurationError, ProfileConfigurationError):
        if not create:
            raise
    click.echo("No AiiDA profile found: creating one with `verdi presto` (SQLite storage, built-in broker).")
    subprocess.run(["verdi", "presto"], check=True)
    from aiida.manage.configuration import reset_config

    reset_config()  # re-read the configuration that `verdi presto` just wrote
    return load_profile(allow_switch=True).name


class AutopipecGroup(click.Group):
    """A click group whose commands report user mistakes as one ``Error:`` line (see :mod:`.errors`)."""

    def invoke(self, ctx: click.Context):
        with user_errors_as_one_line():
            return super().invoke(ctx)


@click.group(cls=AutopipecGroup)
@click.version_option(__version__, "--version", "-V", prog_name="autopipec", message="%(prog)s %(version)s")
@click.option(
    "--profile",
    PROFILE_OPTION,
    default=None,
    metavar="NAME",
    help="AiiDA profile to use (default: AiiDA's default profile). Unlike `verdi -p`, `-p` of `train`/`learn` "
    "sets fit parameters, so the profile is only `--profile`, given before the command.",
)
def autopipec(profile: str | None) -> None:
    """Fit ACE potentials with Pacemaker under AiiDA provenance.

    Energies in eV, forces in eV/Å, lengths in Å. Start with `autopipec quickstart`.
    """


@autopipec.command()
@click.option("--computer", default="localhost", show_default=True, help="AiiDA computer to register the codes on.")
@click.option("--label", default="pacemaker", show_default=True, help="Label of the pacemaker code.")
def setup(computer: str, label: str) -> None:
    """Register this environment's `pacemaker` and the labeller/selection Python codes (idempotent)."""
    load_or_create_profile()
    from aiida_autopipec.codes import (
        PYTHON_CODES,
        get_or_create_local_code,
        get_or_create_localhost,
        get_or_create_python_code,
    )

    host = get_or_create_localhost(computer)
    try:
        codes = [get_or_create_local_code(label, host)]
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from exc
    codes += [get_or_create_python_code(python_label, host) for python_label in PYTHON_CODES]
    for code in codes:
        plugin = code.default_calc_job_plugin or "-"
        click.echo(f"code {code.full_label} (pk {code.pk}, {plugin}) runs {code.filepath_executable}")


@autopipec.command()
@click.option("--structures", default=40, show_default=True, help="Number of EMT-labelled training structures.")
@click.option("--maxiter", default=100, show_default=True, help="Optimiser iterations.")
@click.option("--seed", default=0, show_default=True, help="Seed of the generated data and the fit.")
def quickstart(structures: int, maxiter: int, seed: int) -> None:
    """Train a real Al-Cu ACE potential on EMT data made here, through AiiDA, and print its metrics."""
    load_or_create_profile()
    from aiida import orm
    from aiida.engine import run_get_node

    from aiida_autopipec.calculations.pacemaker import PacemakerCalculation
    from aiida_autopipec.codes import get_or_create_local_code
    from aiida_autopipec.data import TrainingSetData
    from aiida_autopipec.learning.reference_data import emt_dataset

    code = get_or_create_local_code()
    click.echo(f"Labelling {structures} + {max(structures // 4, 4)} Al-Cu structures with ASE's EMT calculator...")
    training_set = TrainingSetData.from_ase(emt_dataset(structures, seed=seed))
    test_set = TrainingSetData.from_ase(emt_dataset(max(structures // 4, 4), seed=seed + 1000))
    parameters = {"cutoff": 4.5, "maxiter": maxiter, "seed": seed, "display_step": 10}
    click.echo(f"Fitting with {code.full_label} (maxiter {maxiter}); this takes about a minute on a laptop CPU...")
    results, node = run_get_node(
        PacemakerCalculation,
        code=code,
        training_set=training_set,
        test_set=test_set,
        parameters=orm.Dict(parameters),
    )
    if not node.is_finished_ok:
        raise click.ClickException(f"PacemakerCalculation<{node.pk}> failed [{node.exit_status}]: {node.exit_message}")
    click.echo(format_metrics(results["metrics"].get_dict()))
    potential = results["potential"]
    click.echo(
        f"\nPotential: PotentialData<{potential.pk}> ({potential.num_functions} functions, cutoff {potential.cutoff} Å)"
    )
    click.echo(provenance_hint(node.pk))


def provenance_hint(pk: int) -> str:
    """The commands that show a process's provenance; the graph only where Graphviz (``dot``) is installed."""
    if shutil.which("dot"):
        return f"Provenance: verdi process show {pk}   |   verdi node graph generate {pk}"
    return (
        f"Provenance: verdi process show {pk}   |   verdi process report {pk}\n"
        "(for a picture of the graph, `verdi node graph generate` needs Graphviz: apt-get install graphviz)"
    )


def format_metrics(metrics: dict) -> str:
    """A small table of train/test errors."""
    lines = [f"{'':6} {'RMSE E (eV/atom)':>17} {'MAE E (eV/atom)':>16} {'RMSE F (eV/Å)':>14} {'MAE F (eV/Å)':>13}"]
    for split in ("train", "test"):
        values = metrics.get(split)
        if values:
            cells = [values.get(k) for k in ("rmse_energy", "mae_energy", "rmse_forces", "mae_forces")]
            text = [f"{v:.4f}" if v is not None else "-" for v in cells]
            lines.append(f"{split:6} {text[0]:>17} {text[1]:>16} {text[2]:>14} {text[3]:>13}")
    target = metrics["rmse_forces_threshold"]
    verdict = "converged" if metrics["is_converged"] else "not converged"
    lines.append(
        f"{metrics['iterations']} iterations; {verdict} (force RMSE on {metrics['judged_on']} vs {target} eV/Å)"
    )
    return "\n".join(lines)
