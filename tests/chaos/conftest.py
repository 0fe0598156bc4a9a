"""Fixtures of the chaos suite: the demo migrated forward and then changed on the target."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.reverse.conftest import change_target, migrate_demo


@pytest.fixture
def changed(databases, migrations_dir, airflow_db, monkeypatch) -> Any:
    """The demo migrated, then changed on the target (non-ASCII and quotes included); small chunks."""
    monkeypatch.setenv("AIRFLOW__SENSEI__REVERSE_CHUNK_ROWS", "200")
    manifest = migrate_demo(databases, migrations_dir, customers=300)
    change_target(databases)
    with databases.connect("target") as conn:
        conn.execute("""UPDATE crm.customers SET name = 'Zoë "order" O''Brien — 東京' WHERE id = 9""")
    return manifest
