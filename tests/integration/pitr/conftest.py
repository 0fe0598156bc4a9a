"""Fixtures of the point-in-time recovery tests: one archiving cluster per test module."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.integration.pitr.clusters import ArchivingCluster, archiving_cluster


@pytest.fixture(scope="module")
def archiving() -> Iterator[ArchivingCluster]:
    """A cluster archiving its WAL, with one base backup taken before any test data."""
    with archiving_cluster() as cluster:
        cluster.base_backup()
        yield cluster


@pytest.fixture
def shop_db(archiving: ArchivingCluster, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh database on the archiving cluster, as Airflow connection ``pitr_target``."""
    name = f"shop_{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("AIRFLOW_CONN_PITR_TARGET", archiving.cluster.create_database(name))
    return name
