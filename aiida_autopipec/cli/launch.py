"""``autopipec train`` and ``autopipec learn``: launch a fit or an active-learning loop from a protocol."""

from __future__ import annotations

from pathlib import Path

import click

from aiida_autopipec.cli.main import autopipec, format_metrics, load_or_create_profile
from aiida_autopipec.cli.utils import load_node_of_type, parse_assignments, read_overrides

PROTOCOLS = ("fast", "moderate", "precise")


def resolve_training_set(value: str, what: str, labelled: bool = True):
    """A TrainingSetData by PK/UUID, or stored from a file (extxyz or ASE database) if ``value`` is a path."""
    from aiida_autopipec.cli.data import import_training_set
    from aiida_autopipec.data import TrainingSetData

    path = Path(value)
    if path.is_file():
        training_set = import_training_set(path, labelled=labelled)
        click.echo(f"{what}: stored {path.name} as TrainingSetData<{training_set.pk}>")
        return training_set
    return load_node_of_type(value, (TrainingSetData,), f"TrainingSetData ({what})")


def resolve_code(label: str | None):
    """The code ``label`` (``name@computer``), or this environment's pacemaker on localhost, registered on first use."""
    from aiida import orm
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    if label is None:
        from aiida_autopipec.codes import get_or_create_local_code

        return get_or_create_local_code()
    try:
        return orm.load_code(label)
    except (NotExistent, MultipleObjectsError, ValueError) as exc:
        raise click.BadParameter(f"no code '{label}' (see `verdi code list`, or run `autopipec setup`): {exc}") from exc


def resolve_python_code(label: str | None, default_label: str, computer):
    from aiida_autopipec.codes import get_or_create_python_code

    return resolve_code(label) if label else get_or_create_python_code(default_label, computer)


def gpu_overrides(code, parameters_path: tuple[str, ...], options_path: tuple[str, ...]) -> dict:
    """``device: gpu`` and, on a scheduler that can reserve GPUs (SLURM), one GPU via ``metadata.options.gpus``."""
    from aiida_autopipec.calculations.gpus import GPU_DIRECTIVES
    from aiida_autopipec.learning.config_gen import deep_merge

    def nested(path: tuple[str, ...], value: dict) -> dict:
        for key in reversed(path):
            value = {key: value}
        return value

    overrides = nested(parameters_path, {"device": "gpu"})
    if code.computer.scheduler_type in GPU_DIRECTIVES:
        overrides = deep_merge(overrides, nested(options_path, {"gpus": 1}))
    return overrides


def launch(builder, daemon: bool) -> None:
    """Submit to the daemon (print the PK and how to follow it) or run in the foreground with progress."""
    from aiida.engine import submit

    from aiida_autopipec.cli.progress import run_with_progress

    if daemon:
        node = submit(builder)
        click.echo(f"Submitted {node.process_label}<{node.pk}> to the daemon.")
        click.echo(f"  follow:  verdi process status {node.pk}   |   verdi process report {node.pk}")
        click.echo(f"  results: autopipec show {node.pk}   |   autopipec plot {node.pk}")
        return
    node = run_with_progress(builder)
    if "metrics" in node.outputs:
        click.echo(format_metrics(node.outputs.metrics.get_dict()))
    if "potential" in node.outputs:
        potential = node.outputs.potential
        description = f"{potential.num_functions} functions, cutoff {potential.cutoff} Å"
        click.echo(f"Potential: PotentialData<{potential.pk}> ({description})")
    click.echo(f"Next: autopipec show {node.pk}   |   autopipec export {node.pk} DIR   |   autopipec plot {node.pk}")
    if not node.is_finished_ok:
        raise click.ClickException(f"{node.process_label}<{node.pk}> failed [{node.exit_status}]: {node.exit_message}")


def common_options(function):
    """Options both commands share."""
    options = [
        click.option("--protocol", type=click.Choice(PROTOCOLS), default="moderate", show_default=True),
        click.option("--test-set", default=None, help="Held-out set: PK/UUID or file."),
        click.option("--code", default=None, help="pacemaker code (default: this environment's, on localhost)."),
        click.option("-p", "--parameter", "parameters", multiple=True, help="TrainingConfig field, KEY=VALUE."),
        click.option("--overrides", type=click.Path(exists=True, dir_okay=False), help="YAML file of input overrides."),
        click.option("--gpu", is_flag=True, help="Train on a GPU: device gpu, and one GPU reserved on SLURM."),
        click.option("--daemon", is_flag=True, help="Submit to the daemon instead of running here."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _protocol_error(exc: Exception) -> click.ClickException:
    return click.ClickException(str(exc))


@autopipec.command()
@click.argument("training_set")
@common_options
def train(training_set, protocol, test_set, code, parameters, overrides, gpu, daemon) -> None:
    """Fit a potential to TRAINING_SET (PK/UUID or extxyz/ASE db file) with the self-healing PacemakerBaseWorkChain."""
    load_or_create_profile()
    from aiida_autopipec.learning.config_gen import deep_merge
    from aiida_autopipec.protocols import ProtocolError
    from aiida_autopipec.workflows.base import PacemakerBaseWorkChain

    extra = deep_merge(read_overrides(overrides), {"pacemaker": {"parameters": parse_assignments(parameters, "-p")}})
    pacemaker = resolve_code(code)
    if gpu:
        extra = deep_merge(
            extra, gpu_overrides(pacemaker, ("pacemaker", "parameters"), ("pacemaker", "metadata", "options"))
        )
    training = resolve_training_set(training_set, "training set")
    test = resolve_training_set(test_set, "test set") if test_set else None
    try:
        builder = PacemakerBaseWorkChain.get_builder_from_protocol(pacemaker, training, protocol, extra, test_set=test)
    except ProtocolError as exc:
        raise _protocol_error(exc) from exc
    fit = builder.pacemaker.parameters.get_dict()
    click.echo(
        f"Protocol {protocol}: {fit['number_of_functions_per_element']} functions per element, maxiter "
        f"{fit['maxiter']}, batch {fit['batch_size']}, cutoff {fit['cutoff']} Å, device {fit.get('device', 'auto')}"
    )
    launch(builder, daemon)


@autopipec.command()
@click.argument("training_set")
@common_options
@click.option("--candidates", default=None, help="Pool to select from: PK/UUID or file (labels are ignored).")
@click.option("--calculator", default="ase.calculators.emt.EMT", show_default=True, help="Labeller import path.")
@click.option("--calculator-kwargs", default="{}", help="Keyword arguments of the labeller, as YAML/JSON.")
@click.option("-c", "--convergence", "convergence", multiple=True, help="ConvergenceConfig field, KEY=VALUE.")
@click.option("--python-code", default=None, help="Code for selection and labelling (default: autopipec setup's).")
def learn(
    training_set,
    protocol,
    test_set,
    code,
    parameters,
    overrides,
    gpu,
    daemon,
    candidates,
    calculator,
    calculator_kwargs,
    convergence,
    python_code,
) -> None:
    """Active learning from TRAINING_SET: fit, select extrapolative CANDIDATES, label them, refit until converged."""
    load_or_create_profile()
    import yaml

    from aiida_autopipec.learning.config_gen import deep_merge
    from aiida_autopipec.protocols import ProtocolError
    from aiida_autopipec.workflows.active_learning import ActiveLearningWorkChain

    extra = deep_merge(
        read_overrides(overrides),
        {
            "parameters": parse_assignments(parameters, "-p"),
            "convergence": parse_assignments(convergence, "-c"),
        },
    )
    pacemaker = resolve_code(code)
    if gpu:
        extra = deep_merge(extra, gpu_overrides(pacemaker, ("parameters",), ("pacemaker", "options")))
    kwargs = yaml.safe_load(calculator_kwargs)
    if not isinstance(kwargs, dict):
        raise click.BadParameter("must be a mapping, e.g. '{asap_cutoff: true}'", param_hint="--calculator-kwargs")
    training = resolve_training_set(training_set, "training set")
    test = resolve_training_set(test_set, "test set") if test_set else None
    pool = resolve_training_set(candidates, "candidates", labelled=False) if candidates else None
    selection = resolve_python_code(python_code, "pace-select", pacemaker.computer) if pool is not None else None
    labelling = resolve_python_code(python_code, "ase-label", pacemaker.computer) if pool is not None else None
    try:
        builder = ActiveLearningWorkChain.get_builder_from_protocol(
            pacemaker,
            training,
            protocol,
            extra,
            test_set=test,
            candidates=pool,
            selection_code=selection,
            labeling_code=labelling,
            calculator={"import_path": calculator, "kwargs": kwargs} if pool is not None else None,
        )
    except ProtocolError as exc:
        raise _protocol_error(exc) from exc
    goal = builder.convergence.get_dict()
    click.echo(
        f"Protocol {protocol}: up to {goal['max_iterations']} fits, {goal['max_new_structures']} new structures each, "
        f"target force RMSE {goal['rmse_forces']} eV/Å"
    )
    launch(builder, daemon)
