"""Provenance queries users run on finished loops (also shown in docs/active_learning.md)."""

from __future__ import annotations

from aiida import orm

__all__ = ["iteration_potentials", "potentials_trained_on", "training_set_of"]


def iteration_potentials(active_learning: orm.WorkChainNode) -> list[dict]:
    """Each iteration's fit of an ``ActiveLearningWorkChain``: potential, training-set size and test force RMSE.

    One QueryBuilder walk: loop --CALL--> PacemakerBaseWorkChain --RETURN--> PotentialData and metrics Dict.
    """
    query = orm.QueryBuilder()
    query.append(orm.WorkChainNode, filters={"id": active_learning.pk}, tag="loop")
    query.append(
        orm.WorkChainNode,
        with_incoming="loop",
        filters={"attributes.process_label": "PacemakerBaseWorkChain"},
        tag="fit",
        project=["id", "ctime"],
    )
    query.append(
        orm.Data,
        with_outgoing="fit",
        edge_filters={"label": "pacemaker__training_set"},
        project=["attributes.num_structures"],
    )
    query.append(orm.Data, with_incoming="fit", edge_filters={"label": "potential"}, project=["uuid"])
    query.append(
        orm.Dict, with_incoming="fit", edge_filters={"label": "metrics"}, project=["attributes.test.rmse_forces"]
    )
    rows = sorted(query.all(), key=lambda row: row[1])
    return [
        {"iteration": i + 1, "fit": pk, "num_structures": size, "potential": uuid, "test_rmse_forces": rmse}
        for i, (pk, _, size, uuid, rmse) in enumerate(rows)
    ]


def training_set_of(potential: orm.Data) -> orm.Data:
    """The ``TrainingSetData`` the CalcJob that created ``potential`` was fitted on."""
    query = orm.QueryBuilder()
    query.append(orm.Data, filters={"id": potential.pk}, tag="potential")
    query.append(orm.CalcJobNode, with_outgoing="potential", tag="fit")
    query.append(orm.Data, with_outgoing="fit", edge_filters={"label": "training_set"}, project=["*"])
    return query.one()[0]


def potentials_trained_on(training_set: orm.Data, max_test_rmse_forces: float | None = None) -> list[dict]:
    """Every potential fitted directly on ``training_set``, with its test force RMSE (eV/Å), oldest first.

    ``max_test_rmse_forces`` keeps only those at or below that error; the filter runs in the database.
    """
    metrics_filters = {}
    if max_test_rmse_forces is not None:
        metrics_filters = {"attributes.test.rmse_forces": {"<=": max_test_rmse_forces}}
    query = orm.QueryBuilder()
    query.append(orm.Data, filters={"id": training_set.pk}, tag="data")
    query.append(
        orm.CalcJobNode, with_incoming="data", edge_filters={"label": "training_set"}, tag="fit", project=["ctime"]
    )
    query.append(orm.Data, with_incoming="fit", edge_filters={"label": "potential"}, project=["*"])
    query.append(
        orm.Dict,
        with_incoming="fit",
        edge_filters={"label": "metrics"},
        filters=metrics_filters,
        project=["attributes.test.rmse_forces"],
    )
    rows = sorted(query.all(), key=lambda row: row[0])
    return [{"potential": potential, "test_rmse_forces": rmse} for _, potential, rmse in rows]
