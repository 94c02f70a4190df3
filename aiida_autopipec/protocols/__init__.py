"""Protocols: named input presets (``fast``, ``moderate``, ``precise``) adapted to the data, with validated overrides.

The presets live in ``pacemaker.yaml`` and ``active_learning.yaml`` next to this module (in the style of
aiida-quantumespresso's ``get_builder_from_protocol``). The basis size and the batch size follow the size of the
training set; user ``overrides`` are deep-merged last and checked against the process spec and the pydantic
configs, so a misspelt key fails here with its name instead of being ignored by Pacemaker.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from importlib import resources
from typing import Any

import yaml
from aiida import orm
from aiida.engine import ProcessBuilder
from plumpy.ports import PortNamespace
from pydantic import ValidationError

from aiida_autopipec.config import describe_validation_error
from aiida_autopipec.learning.config_gen import number_of_functions_per_element

__all__ = [
    "ProtocolError",
    "active_learning_inputs",
    "available_protocols",
    "base_workchain_inputs",
    "build",
    "get_protocol",
    "pacemaker_inputs",
]


class ProtocolError(ValueError):
    """An unknown protocol, or overrides that name unknown inputs or carry invalid values."""


def _load(name: str) -> dict[str, Any]:
    """The parsed ``<name>.yaml`` shipped with the package."""
    text = resources.files(__package__).joinpath(f"{name}.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def available_protocols(name: str) -> dict[str, str]:
    """Protocol names of ``name`` (``pacemaker`` or ``active_learning``) with their descriptions."""
    return {key: value["description"] for key, value in _load(name)["protocols"].items()}


def get_protocol(name: str, protocol: str | None = None) -> dict[str, Any]:
    """The preset ``protocol`` of ``name`` (default: the file's ``default_protocol``); unknown names are refused."""
    content = _load(name)
    protocol = protocol or content["default_protocol"]
    if protocol not in content["protocols"]:
        raise ProtocolError(f"unknown protocol '{protocol}'; choose one of {sorted(content['protocols'])}")
    return copy.deepcopy(content["protocols"][protocol])


def _data_adapted_parameters(preset: Mapping[str, Any], training_set) -> dict[str, Any]:
    """The preset's TrainingConfig fields plus the basis size and batch size this training set supports."""
    parameters = dict(preset["parameters"])
    num_elements = len(training_set.elements)
    parameters["number_of_functions_per_element"] = number_of_functions_per_element(
        training_set.num_structures, training_set.num_atoms, num_elements, preset["max_functions_per_element"]
    )
    parameters["batch_size"] = max(1, min(preset["max_batch_size"], training_set.num_structures))
    return parameters


def pacemaker_inputs(
    code: orm.AbstractCode,
    training_set,
    protocol: str | None = None,
    *,
    test_set=None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Plain inputs of a ``PacemakerCalculation`` for ``protocol`` (parameters still a dict)."""
    preset = get_protocol("pacemaker", protocol)
    inputs: dict[str, Any] = {
        "code": code,
        "training_set": training_set,
        "parameters": _data_adapted_parameters(preset, training_set),
    }
    if test_set is not None:
        inputs["test_set"] = test_set
    if options:
        inputs["metadata"] = {"options": dict(options)}
    return inputs


def base_workchain_inputs(code, training_set, protocol: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Plain inputs of a ``PacemakerBaseWorkChain``: the calculation's under ``pacemaker`` plus ``max_iterations``."""
    preset = get_protocol("pacemaker", protocol)
    return {
        "pacemaker": pacemaker_inputs(code, training_set, protocol, **kwargs),
        "max_iterations": preset["max_restarts"],
    }


def active_learning_inputs(
    code: orm.AbstractCode,
    training_set,
    protocol: str | None = None,
    *,
    test_set=None,
    candidates=None,
    selection_code: orm.AbstractCode | None = None,
    labeling_code: orm.AbstractCode | None = None,
    calculator: str | Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Plain inputs of an ``ActiveLearningWorkChain``; ``calculator`` is an import path or ``{import_path, kwargs}``."""
    preset = get_protocol("active_learning", protocol)
    fit_preset = get_protocol("pacemaker", preset["pacemaker_protocol"])
    inputs: dict[str, Any] = {
        "training_set": training_set,
        "parameters": _data_adapted_parameters(fit_preset, training_set),
        "convergence": dict(preset["convergence"]),
        "pacemaker": {"code": code, **({"options": dict(options)} if options else {})},
    }
    for key, value in (("test_set", test_set), ("candidates", candidates)):
        if value is not None:
            inputs[key] = value
    if selection_code is not None:
        inputs["selection"] = {"code": selection_code}
    if labeling_code is not None or calculator is not None:
        inputs["labeling"] = {}
        if labeling_code is not None:
            inputs["labeling"]["code"] = labeling_code
        if calculator is not None:
            if isinstance(calculator, str):
                calculator = {"import_path": calculator, "kwargs": {}}
            inputs["labeling"]["calculator"] = dict(calculator)
    return inputs


# -- overrides -------------------------------------------------------------------------------------------------
def _dict_schemas() -> dict[str, Any]:
    """Validators of the plain-dict content of ``Dict`` inputs, by port name."""
    from aiida_autopipec.calculations.pacemaker import SETTINGS_KEYS
    from aiida_autopipec.config import TrainingConfig
    from aiida_autopipec.workflows.active_learning import ConvergenceConfig

    def parameters(value: Mapping) -> None:
        TrainingConfig(**{key: item for key, item in value.items() if key != "elements"})

    def settings(value: Mapping) -> None:
        unknown = sorted(set(value) - set(SETTINGS_KEYS))
        if unknown:
            raise ProtocolError(f"unknown key(s) {unknown}; known: {sorted(SETTINGS_KEYS)}")

    def convergence(value: Mapping) -> None:
        ConvergenceConfig(**value)

    return {"parameters": parameters, "settings": settings, "convergence": convergence}


def _check_overrides(overrides: Mapping[str, Any], namespace: PortNamespace, path: str = "") -> None:
    """Every key of ``overrides`` must be a declared port of ``namespace``, checked recursively.

    Also in dynamic namespaces (an exposed namespace is one): a misspelt key there would otherwise be passed on.
    """
    for key, value in overrides.items():
        if key not in namespace:
            raise ProtocolError(f"overrides: unknown input '{path}{key}'; known here: {sorted(namespace)}")
        port = namespace[key]
        if isinstance(port, PortNamespace) and isinstance(value, Mapping):
            _check_overrides(value, port, f"{path}{key}.")


def _merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` recursively merged onto ``base``; nodes are shared, not copied (stored nodes cannot be)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_dict_contents(inputs: Mapping[str, Any], path: str = "") -> None:
    """Validate the merged plain dicts of ``parameters``, ``settings`` and ``convergence`` wherever they occur."""
    schemas = _dict_schemas()
    for key, value in inputs.items():
        if not isinstance(value, Mapping):
            continue
        if key in schemas:
            try:
                schemas[key](value)
            except ValidationError as exc:
                raise ProtocolError(f"{path}{key}: {describe_validation_error(exc)}") from exc
            except ProtocolError as exc:
                raise ProtocolError(f"{path}{key}: {exc}") from exc
        elif key not in ("metadata", "options", "calculator"):
            _check_dict_contents(value, f"{path}{key}.")


def _to_nodes(inputs: Mapping[str, Any], namespace: PortNamespace) -> dict[str, Any]:
    """Plain values to the nodes the ports take: dicts to ``orm.Dict``, numbers a port refuses to ``Int``/``Float``."""
    converted = {}
    for key, value in inputs.items():
        port = namespace[key]
        if isinstance(port, PortNamespace):
            converted[key] = _to_nodes(value, port)
        elif isinstance(value, Mapping) and port.valid_type is orm.Dict:
            converted[key] = orm.Dict(dict(value))
        elif port.validate(value) is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            converted[key] = value  # the port takes it as it is (e.g. metadata options), or it is not a number
        else:
            converted[key] = orm.Int(value) if isinstance(value, int) else orm.Float(value)
    return converted


def build(process_class, inputs: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> ProcessBuilder:
    """A builder of ``process_class`` from protocol ``inputs`` with ``overrides`` deep-merged and validated."""
    namespace = process_class.spec().inputs
    overrides = dict(overrides or {})
    _check_overrides(overrides, namespace)
    merged = _merge(inputs, overrides)
    _check_dict_contents(merged)
    builder = process_class.get_builder()
    builder._merge(_to_nodes(merged, namespace))
    return builder
