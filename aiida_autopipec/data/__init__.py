"""AiiDA data types: training sets and fitted potentials."""

from aiida_autopipec.data.potential import PotentialData
from aiida_autopipec.data.training_set import TrainingSetData

__all__ = ["PotentialData", "TrainingSetData"]
