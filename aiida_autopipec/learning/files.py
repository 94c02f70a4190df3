"""The one place that knows the names of the files Pacemaker reads and writes.

Pacemaker decides most of these names itself; the job script and the parser only refer to them through here.
"""

from __future__ import annotations

#: Pacemaker input written by :class:`~aiida_autopipec.learning.config_gen.PacemakerConfigGenerator`.
INPUT_YAML = "input.yaml"
#: Pacemaker's command-line arguments: ``--verbose-tf`` keeps TensorFlow's device messages in stderr (which device
#: ran is read from them, :mod:`~aiida_autopipec.learning.device`), then the input file.
PACEMAKER_ARGUMENTS = ("--verbose-tf", INPUT_YAML)
#: Skips Pacemaker's predictions on the training and test sets after the fit: prediction pickles and validation plots
#: (~2 s per fit here, mostly matplotlib) that the evaluation of the delivered model (with ZBL) makes redundant.
NO_PREDICT = "--no-predict"


def pacemaker_arguments(predictions: bool = False) -> list[str]:
    """Pacemaker's command line after the executable; ``predictions`` keeps its prediction pickles and plots."""
    return [*PACEMAKER_ARGUMENTS[:-1], *([] if predictions else [NO_PREDICT]), PACEMAKER_ARGUMENTS[-1]]


#: Training data: pickle of a pandas DataFrame (written only inside a working directory). Uncompressed: Pacemaker
#: infers the compression from the name, and gzip would cost more time than the ~20 % it saves on float data.
TRAINING_DATA = "training_data.pckl"
#: Held-out data passed as Pacemaker's ``data.test_filename``.
TEST_DATA = "test_data.pckl"
#: Initial potential for a warm start (B-basis YAML).
INITIAL_POTENTIAL = "initial_potential.yaml"

#: Pacemaker's console output, its error stream and its exit code, captured by the job script.
STDOUT = "pacemaker.out"
STDERR = "pacemaker.err"
EXIT_STATUS = "pacemaker.exit_status"

#: Files written by Pacemaker itself.
LOG = "log.txt"
OUTPUT_POTENTIAL_YAML = "output_potential.yaml"
OUTPUT_POTENTIAL_YACE = "output_potential.yace"
TRAIN_METRICS = "metrics.txt"
TEST_METRICS = "test_metrics.txt"
TRAIN_CYCLE_METRICS = "cycle_metrics.txt"
TEST_CYCLE_METRICS = "test_cycle_metrics.txt"
INTERIM_POTENTIAL = "interim_potential_0.yaml"
TARGET_POTENTIAL = "target_potential.yaml"
FITTING_DATA_INFO = "fitting_data_info.pckl.gzip"
TEST_DATA_INFO = "test_data_info.pckl.gzip"
#: Written only without ``--no-predict`` (see :func:`pacemaker_arguments`).
TRAIN_PREDICTIONS = "train_pred.pckl.gzip"
TEST_PREDICTIONS = "test_pred.pckl.gzip"

#: Output of the ``.yaml`` -> ``.yace`` conversion run on the compute side.
YAML2YACE_LOG = "yaml2yace.out"

#: Evaluation of the delivered model on the compute side (``learning/evaluate_model.py`` and its ``zbl.py``).
EVALUATION_SCRIPT = "evaluate_model.py"
EVALUATION_ZBL_MODULE = "zbl.py"
EVALUATION_INPUT = "evaluation_input.json"
EVALUATION_OUTPUT = "evaluation.json"
EVALUATION_LOG = "evaluate.out"

#: Files kept in the calculation's ``retrieved`` folder: the run's own record (console output, errors with Pacemaker's
#: whole log, exit code, metrics tables, the logs of the compute-side steps). Prediction pickles (several MB) only on
#: request.
RETRIEVE_LIST = [
    STDOUT,
    STDERR,
    EXIT_STATUS,
    TRAIN_METRICS,
    TEST_METRICS,
    TRAIN_CYCLE_METRICS,
    TEST_CYCLE_METRICS,
    YAML2YACE_LOG,
    EVALUATION_LOG,
]
#: Files the parser stores as output nodes (potential, interim potential, metrics and dimer curves of the delivered
#: model) or that repeat a kept file (``log.txt``: its lines are in ``pacemaker.err``): fetched only for parsing
#: (AiiDA's ``retrieve_temporary_list``), so their content is not stored twice.
#: Add a name to ``metadata.options.additional_retrieve_list`` to keep the raw file as well.
RETRIEVE_TEMPORARY_LIST = [
    LOG,  # every line of it is also in STDERR, which is kept; the parser reads its error summaries
    OUTPUT_POTENTIAL_YAML,
    OUTPUT_POTENTIAL_YACE,
    INTERIM_POTENTIAL,
    EVALUATION_OUTPUT,
]
