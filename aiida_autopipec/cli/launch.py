"""``autopipec train`` and ``autopipec learn``: launch a fit or an active-learning loop from a protocol."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import click

from aiida_autopipec.cli.data import import_training_set_with_status
from aiida_autopipec.cli.main import autopipec, format_metrics, load_or_create_profile
from aiida_autopipec.cli.utils import (
    add_to_group,
    load_node_of_type,
    parse_assignments,
    protocol_help,
    read_overrides,
)

PROTOCOLS = ("fast", "moderate", "precise")
#: TrainingSetData read from files by this command, not stored yet: UUID -> what to print once they are stored.
PENDING_IMPORTS: dict[str, str] = {}
#: A UUID or its leading part, as ``verdi`` accepts it.
UUID_LIKE = re.compile(r"[0-9a-fA-F]{4,}(-[0-9a-fA-F]{1,12}){0,4}")


def looks_like_identifier(value: str) -> bool:
    """Whether ``value`` can be a node's PK or (partial) UUID rather than a file name."""
    return value.isdigit() or bool(UUID_LIKE.fullmatch(value))


def resolve_training_set(value: str, what: str, labelled: bool = True):
    """A TrainingSetData by PK/UUID, or from a file (extxyz, ASE database, Pacemaker pickle) if ``value`` is a path.

    A file whose content is already stored gives that node (the user is told); otherwise a new, unstored node:
    :func:`launch` stores it only once the inputs are accepted, so nothing is stored for refused inputs.
    """
    from aiida_autopipec.data import TrainingSetData

    path = Path(value)
    if path.is_file():
        try:
            imported = import_training_set_with_status(path, labelled=labelled, store=False)
        except click.ClickException as exc:  # name the file and what it was given as
            where = "" if str(path) in exc.message else f"{path}: "
            raise click.ClickException(f"{what}: {where}{exc.message}") from exc
        if imported.reused:
            click.echo(f"{what}: {path.name} is {imported.message()}")
        else:
            PENDING_IMPORTS[imported.node.uuid] = f"{what}: stored {path.name}"
        return imported.node
    if not looks_like_identifier(value):
        raise click.ClickException(f"{what}: {value}: no such file (nor a PK or UUID of a TrainingSetData)")
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


def check_daemon_running() -> None:
    """Refuse ``--daemon`` when nothing would run the process: no broker in the profile, or no daemon running."""
    from aiida.engine.daemon.client import get_daemon_client
    from aiida.manage import get_manager

    profile = get_manager().get_profile()
    if profile.process_control_backend is None:
        raise click.ClickException(
            f"profile '{profile.name}' has no broker, so no daemon can run processes: run without --daemon"
        )
    if not get_daemon_client().is_daemon_running:
        raise click.ClickException(
            f"the daemon of profile '{profile.name}' is not running: start it with `verdi daemon start` "
            "(or run in the foreground, without --daemon)"
        )


def check_inputs(builder) -> None:
    """Validate the builder's inputs as the process will, before anything is stored; one line on failure. Then
    store the training sets read from files for this command (so the user learns their PKs)."""
    spec = builder.process_class.spec()
    inputs = builder._inputs(prune=True)
    error = spec.inputs.validate(spec.inputs.pre_process(inputs))
    if error is not None:
        message = re.sub(r"^Error occurred validating port '(inputs\.?)?([^']*)':\s*", r"\2: ", str(error))
        raise click.ClickException(" ".join(message.lstrip(": ").split()))
    for node in _nodes(inputs):
        if not node.is_stored and node.uuid in PENDING_IMPORTS:
            click.echo(f"{PENDING_IMPORTS.pop(node.uuid)} as {type(node).__name__}<{node.store().pk}>")


def _nodes(inputs) -> list:
    """The nodes in a (nested) mapping of process inputs."""
    from aiida import orm

    if isinstance(inputs, orm.Node):
        return [inputs]
    if isinstance(inputs, Mapping):
        return [node for value in inputs.values() for node in _nodes(value)]
    return []


def launch(builder, daemon: bool, group: str | None = None) -> None:
    """Submit to the daemon (print the PK and how to follow it) or run in the foreground with progress."""
    from aiida.engine import submit

    from aiida_autopipec.cli.progress import run_with_progress

    check_inputs(builder)
    if daemon:
        node = submit(builder)
        click.echo(f"Submitted {node.process_label}<{node.pk}> to the daemon.")
        add_to_group(group, node)
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
    add_to_group(group, node, *([node.outputs.potential] if "potential" in node.outputs else []))
    click.echo(f"Next: autopipec show {node.pk}   |   autopipec export {node.pk} DIR   |   autopipec plot {node.pk}")
    if not node.is_finished_ok:
        raise click.ClickException(f"{node.process_label}<{node.pk}> failed [{node.exit_status}]: {node.exit_message}")


def common_options(protocols: str):
    """Options ``train`` and ``learn`` share; ``protocols`` names the YAML file whose presets ``--protocol`` lists."""
    options = [
        click.option(
            "--protocol",
            type=click.Choice(PROTOCOLS),
            default="moderate",
            show_default=True,
            help=f"Preset of the inputs. {protocol_help(protocols)}",
        ),
        click.option("--test-set", default=None, help="Held-out set: PK/UUID or file."),
        click.option("--code", default=None, help="pacemaker code (default: this environment's, on localhost)."),
        click.option(
            "-p",
            "--parameter",
            "parameters",
            multiple=True,
            metavar="KEY=VALUE",
            help="TrainingConfig field (repeatable), e.g. -p maxiter=200 -p cutoff=5.5; `autopipec fields` lists "
            "them with units and defaults. (Not `verdi -p`: the profile is `autopipec --profile NAME`.)",
        ),
        click.option("--overrides", type=click.Path(exists=True, dir_okay=False), help="YAML file of input overrides."),
        click.option("--gpu", is_flag=True, help="Train on a GPU: device gpu, and one GPU reserved on SLURM."),
        click.option("--daemon", is_flag=True, help="Submit to the running daemon instead of running here."),
        click.option("--group", default=None, metavar="LABEL", help="Add the run (and its potential) to this group."),
    ]

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


@autopipec.command()
@click.argument("training_set")
@common_options("pacemaker")
def train(training_set, protocol, test_set, code, parameters, overrides, gpu, daemon, group) -> None:
    """Fit a potential to TRAINING_SET (PK/UUID or extxyz/ASE db file) with the self-healing PacemakerBaseWorkChain."""
    load_or_create_profile()
    if daemon:
        check_daemon_running()
    from aiida_autopipec.learning.config_gen import deep_merge
    from aiida_autopipec.workflows.base import PacemakerBaseWorkChain

    extra = deep_merge(read_overrides(overrides), {"pacemaker": {"parameters": parse_assignments(parameters, "-p")}})
    pacemaker = resolve_code(code)
    if gpu:
        extra = deep_merge(
            extra, gpu_overrides(pacemaker, ("pacemaker", "parameters"), ("pacemaker", "metadata", "options"))
        )
    training = resolve_training_set(training_set, "training set")
    test = resolve_training_set(test_set, "test set") if test_set else None
    builder = PacemakerBaseWorkChain.get_builder_from_protocol(pacemaker, training, protocol, extra, test_set=test)
    fit = builder.pacemaker.parameters.get_dict()
    click.echo(
        f"Protocol {protocol}: {fit['number_of_functions_per_element']} functions per element, maxiter "
        f"{fit['maxiter']}, batch {fit['batch_size']}, cutoff {fit['cutoff']} Å, device {fit.get('device', 'auto')}"
    )
    launch(builder, daemon, group)


@autopipec.command()
@click.argument("training_set")
@common_options("active_learning")
@click.option("--candidates", default=None, help="Pool to select from: PK/UUID or file (labels are ignored).")
@click.option("--calculator", default="ase.calculators.emt.EMT", show_default=True, help="Labeller import path.")
@click.option("--calculator-kwargs", default="{}", help="Keyword arguments of the labeller, as YAML/JSON.")
@click.option(
    "-c",
    "--convergence",
    "convergence",
    multiple=True,
    metavar="KEY=VALUE",
    help="ConvergenceConfig field (repeatable), e.g. -c rmse_forces=0.03; `autopipec fields` lists them with units.",
)
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
    group,
    candidates,
    calculator,
    calculator_kwargs,
    convergence,
    python_code,
) -> None:
    """Active learning from TRAINING_SET: fit, select extrapolative CANDIDATES, label them, refit until converged."""
    load_or_create_profile()
    if daemon:
        check_daemon_running()
    import yaml

    from aiida_autopipec.learning.config_gen import deep_merge
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
    goal = builder.convergence.get_dict()
    click.echo(
        f"Protocol {protocol}: up to {goal['max_iterations']} fits, {goal['max_new_structures']} new structures each, "
        f"target force RMSE {goal['rmse_forces']} eV/Å"
    )
    launch(builder, daemon, group)
