"""The migration's start: the moment a rollback goes back to.

Backup restore takes, by default, the newest backup taken at or before it; truncate trusts only
such a backup as evidence of what the target held before the migration; point-in-time
recovery restores to it unless told otherwise. It is the moment of the migration's start mark
(:mod:`sensei_airflow.mark`) when one was taken, else the manifest's ``started_at``.
"""

from __future__ import annotations

from datetime import datetime

from sensei_airflow.manifest import Manifest
from sensei_airflow.state import StateStore


class NoStart(LookupError):
    """Neither a start mark nor ``started_at``: nothing says when the migration began."""


def migration_start(manifest: Manifest, state: StateStore | None = None) -> datetime:
    """When the forward migration began (timezone-aware): its start mark's moment, else ``started_at``.

    :param manifest: the migration.
    :param state: its state store (default: the manifest's).
    :raises NoStart: when the migration has neither (one line, naming both ways to give one).
    """
    from sensei_airflow.mark import load_mark

    mark = load_mark(state or StateStore(manifest.state.conn_id), manifest.id)
    if mark is not None:
        return mark.taken_at
    if manifest.started_at is not None:
        return manifest.started_at
    raise NoStart(
        f"migration {manifest.id} has no start mark and no started_at: take the mark before it writes "
        f"(sensei migration start {manifest.id}) or set started_at in its manifest"
    )
