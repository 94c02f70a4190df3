"""Provenance queries users run on finished loops (also shown in docs/active_learning.md)."""

from __future__ import annotations

from aiida import orm

__all__ = ["iteration_potentials"]


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
