"""The migration's start: the moment a rollback goes back to.

Backup restore takes, by default, the newest backup taken at or before it; truncate trusts only
such a backup as evidence of what the target held before the migration; point-in-time
recovery restores to it unless told otherwise. Today it is the manifest's ``started_at``; every
use goes through :func:`migration_start`, so a recorded start mark can take its place here.
"""

from __future__ import annotations

from datetime import datetime

from sensei_airflow.manifest import Manifest


def migration_start(manifest: Manifest) -> datetime:
    """When the forward migration began (timezone-aware): the manifest's ``started_at``.

    :param manifest: the migration.
    """
    return manifest.started_at
