from common import db


def test_schema_is_current(conn):
    assert db.schema_version(conn) == db.SCHEMA_VERSION
