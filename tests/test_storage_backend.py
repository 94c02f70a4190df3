"""Check that the session profile runs on the storage backend selected by ``AUTOPIPEC_TEST_STORAGE``."""

from aiida import orm
from aiida.manage import get_manager

from tests.storage_fixtures import requested_storage_backend


def test_storage_backend_matches_request(aiida_profile):
    """Store and reload a node, and check the storage plugin is the requested one.

    ``AUTOPIPEC_TEST_STORAGE=psql`` -> ``core.psql_dos``;
    unset/``sqlite`` -> ``core.sqlite_dos`` (aiida's default).
    """
    node = orm.Int(5).store()
    loaded = orm.load_node(node.pk)
    assert loaded.uuid == node.uuid
    assert loaded.value == 5

    expected = requested_storage_backend()
    assert aiida_profile.storage_backend == expected
    assert get_manager().get_profile().storage_backend == expected
    # The loaded storage object itself is of the requested plugin class.
    storage = get_manager().get_profile_storage()
    expected_cls = {"core.psql_dos": "PsqlDosBackend", "core.sqlite_dos": "SqliteDosStorage"}[expected]
    assert type(storage).__name__ == expected_cls
    # ... and really talks to the matching database engine.
    expected_dialect = {"core.psql_dos": "postgresql", "core.sqlite_dos": "sqlite"}[expected]
    assert storage.get_session().bind.dialect.name == expected_dialect
