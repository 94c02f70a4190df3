"""PNG figures of a fit: learning curve, energy/force parity, active-learning convergence, dimer curves.

AiiDA-free: every function takes plain arrays and dicts and writes one PNG with matplotlib's Agg canvas (no pyplot
state, so it works in daemons and tests). Units: energies eV/atom, forces eV/Å, distances Å.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "convergence_figure",
    "dimer_figure",
    "learning_curve_figure",
    "parity_figure",
    "predict",
]

SPLIT_COLOURS = {"train": "tab:blue", "test": "tab:orange"}


def _figure(columns: int, width: float = 4.6, height: float = 3.8):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * columns, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure, [figure.add_subplot(1, columns, index + 1) for index in range(columns)]


def _save(figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def predict(structures: Sequence[Any], calculator) -> tuple[np.ndarray, np.ndarray]:
    """Energy per atom (eV/atom) of every structure and all force components (eV/Å) from ``calculator``."""
    energies, forces = [], []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy() / len(atoms))
        forces.append(np.asarray(atoms.get_forces()).reshape(-1))
    return np.asarray(energies), np.concatenate(forces) if forces else np.zeros(0)


def reference_values(structures: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Reference energy per atom (eV/atom) and force components (eV/Å) that the structures carry."""
    energies = np.asarray([atoms.get_potential_energy() / len(atoms) for atoms in structures])
    forces = np.concatenate([np.asarray(atoms.get_forces()).reshape(-1) for atoms in structures])
    return energies, forces


def learning_curve_figure(curve: Mapping[str, Sequence[float]], path: str | os.PathLike) -> Path:
    """Loss and force RMSE per iteration (train, and test where Pacemaker evaluated it), log scale."""
    figure, (loss_axis, force_axis) = _figure(2)
    loss_axis.semilogy(curve["iteration"], curve["loss"], color=SPLIT_COLOURS["train"], marker=".", label="train")
    force_axis.semilogy(
        curve["iteration"], curve["rmse_forces"], color=SPLIT_COLOURS["train"], marker=".", label="train"
    )
    if len(curve.get("test_iteration", ())):
        loss_axis.semilogy(
            curve["test_iteration"], curve["test_loss"], color=SPLIT_COLOURS["test"], marker="o", label="test"
        )
        force_axis.semilogy(
            curve["test_iteration"], curve["test_rmse_forces"], color=SPLIT_COLOURS["test"], marker="o", label="test"
        )
    loss_axis.set(xlabel="iteration", ylabel="loss", title="Loss")
    force_axis.set(xlabel="iteration", ylabel="force RMSE (eV/Å)", title="Force error")
    for axis in (loss_axis, force_axis):
        axis.grid(alpha=0.3)
        axis.legend()
    return _save(figure, path)


def parity_figure(
    splits: Mapping[str, tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]],
    path: str | os.PathLike,
) -> Path:
    """Predicted vs reference energy per atom and force components; ``splits``: name -> (reference, predicted)."""
    figure, (energy_axis, force_axis) = _figure(2)
    for name, ((reference_energy, reference_forces), (predicted_energy, predicted_forces)) in splits.items():
        colour = SPLIT_COLOURS.get(name)
        rmse_energy = float(np.sqrt(np.mean((predicted_energy - reference_energy) ** 2)))
        rmse_forces = float(np.sqrt(np.mean((predicted_forces - reference_forces) ** 2)))
        energy_axis.scatter(
            reference_energy, predicted_energy, s=12, alpha=0.7, color=colour, label=f"{name} (RMSE {rmse_energy:.4f})"
        )
        force_axis.scatter(
            reference_forces, predicted_forces, s=4, alpha=0.4, color=colour, label=f"{name} (RMSE {rmse_forces:.3f})"
        )
    for axis, quantity in ((energy_axis, "energy (eV/atom)"), (force_axis, "force component (eV/Å)")):
        low, high = axis.get_xlim()
        low, high = min(low, axis.get_ylim()[0]), max(high, axis.get_ylim()[1])
        axis.plot([low, high], [low, high], color="0.4", lw=0.8)
        axis.set(xlabel=f"reference {quantity}", ylabel=f"predicted {quantity}", xlim=(low, high), ylim=(low, high))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    energy_axis.set_title("Energy parity")
    force_axis.set_title("Force parity")
    return _save(figure, path)


def convergence_figure(history: Sequence[Mapping[str, Any]], path: str | os.PathLike, target: float | None) -> Path:
    """Force RMSE (train/test) and training-set size per active-learning iteration, with the target."""
    figure, (axis,) = _figure(1, width=6.0)
    iterations = [entry["iteration"] for entry in history]
    for split in ("train", "test"):
        values = [(entry.get(split) or {}).get("rmse_forces", np.nan) for entry in history]
        axis.semilogy(iterations, values, marker="o", color=SPLIT_COLOURS[split], label=f"{split} force RMSE")
    if target is not None:
        axis.axhline(target, color="tab:green", ls="--", label=f"target {target} eV/Å")
    axis.set(xlabel="iteration", ylabel="force RMSE (eV/Å)", title="Active learning")
    axis.set_xticks(iterations)
    axis.grid(alpha=0.3)
    sizes = axis.twinx()
    sizes.bar(iterations, [entry["num_structures"] for entry in history], alpha=0.15, color="0.3")
    sizes.set_ylabel("training structures")
    axis.set_zorder(sizes.get_zorder() + 1)
    axis.patch.set_visible(False)
    axis.legend(fontsize=8)
    return _save(figure, path)


def dimer_figure(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike,
    pair_cutoffs: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Energy (eV, 0 = separated atoms) of every element pair as a dimer, with its repulsion switching region."""
    pairs = sorted(curves)
    figure, axes = _figure(len(pairs), width=4.0)
    for axis, pair in zip(axes, pairs, strict=True):
        r, energy = np.asarray(curves[pair]["r"]), np.asarray(curves[pair]["energy"])
        axis.plot(r, energy, color="tab:purple")
        if pair_cutoffs and pair in pair_cutoffs:
            inner, outer = pair_cutoffs[pair]
            axis.axvspan(inner, outer, color="0.9", label="switching region")
            axis.legend(fontsize=8)
        axis.axhline(0.0, color="0.5", lw=0.5)
        finite = energy[np.isfinite(energy)]
        if finite.size:
            axis.set_ylim(min(finite.min(), -1.0) * 1.1, min(finite.max(), 30.0))
        axis.set(title=pair, xlabel="r (Å)", ylabel="dimer energy (eV)")
        axis.grid(alpha=0.3)
    return _save(figure, path)
