"""Requesting GPUs from the scheduler with one option, ``metadata.options.gpus``, instead of hand-written lines.

AiiDA's JobTemplate has no GPU field, so the request becomes a scheduler directive in the job's
``custom_scheduler_commands`` when the CalcJob's node is created (recorded in its options, visible in provenance).
Schedulers without a known directive refuse the option before anything is stored.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GPU_DIRECTIVES", "add_gpu_option", "gpu_scheduler_commands", "validate_gpu_request"]

#: Directive per scheduler plugin that reserves ``{gpus}`` GPUs on each machine of the job.
GPU_DIRECTIVES = {"core.slurm": "#SBATCH --gres=gpu:{gpus}"}
#: Hand-written directives that would conflict with the option.
_CONFLICTING = ("--gres", "--gpus", "--gpus-per-node", "--gpus-per-task")


def add_gpu_option(spec) -> None:
    """Declare ``metadata.options.gpus`` on a CalcJob spec."""
    spec.input(
        "metadata.options.gpus",
        valid_type=int,
        required=False,
        help=(
            "GPUs to reserve on each machine (SLURM: `#SBATCH --gres=gpu:N`). TensorFlow trains on the first "
            "visible GPU with parameters.device 'auto' or 'gpu'. Only for schedulers that can request GPUs: "
            f"{', '.join(sorted(GPU_DIRECTIVES))}."
        ),
    )


def _computer(inputs: dict):
    computer = inputs.get("metadata", {}).get("computer")
    code = inputs.get("code")
    return computer if computer is not None else getattr(code, "computer", None)


def validate_gpu_request(inputs: dict, device: str | None) -> str | None:
    """Why a GPU request cannot be honoured (bad number, CPU-only fit, scheduler without GPUs), or None."""
    options = inputs.get("metadata", {}).get("options", {})
    gpus = options.get("gpus")
    if gpus is None:
        return None
    if isinstance(gpus, bool) or gpus < 0:
        return f"metadata.options.gpus: must be a whole number >= 0, got {gpus!r}"
    if gpus == 0:
        return None
    if device == "cpu":
        return (
            f"metadata.options.gpus: {gpus} GPU(s) requested but parameters.device is 'cpu', which hides them; "
            "use device 'auto' or 'gpu'"
        )
    computer = _computer(inputs)
    scheduler = computer.scheduler_type if computer is not None else None
    if scheduler not in GPU_DIRECTIVES:
        return (
            f"metadata.options.gpus: scheduler {scheduler!r} of computer "
            f"{getattr(computer, 'label', None)!r} cannot request GPUs (supported: {sorted(GPU_DIRECTIVES)}); "
            "without a batch scheduler the job sees the machine's GPUs anyway: leave gpus unset"
        )
    custom = options.get("custom_scheduler_commands") or ""
    conflicting = [flag for flag in _CONFLICTING if flag in custom]
    if conflicting:
        return (
            f"metadata.options.gpus: custom_scheduler_commands already requests GPUs ({', '.join(conflicting)}); "
            "give the request in one place"
        )
    return None


def gpu_scheduler_commands(options: dict[str, Any], scheduler_type: str) -> str | None:
    """``custom_scheduler_commands`` with the GPU directive appended, or None when no GPU is requested."""
    gpus = options.get("gpus")
    if not gpus:
        return None
    directive = GPU_DIRECTIVES[scheduler_type].format(gpus=gpus)  # the validator refused other schedulers
    existing = options.get("custom_scheduler_commands") or ""
    return f"{existing}\n{directive}" if existing.strip() else directive
