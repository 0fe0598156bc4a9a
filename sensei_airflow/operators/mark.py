"""``MigrationStartOperator``: the first task of a forward-migration DAG takes the migration's start mark.

The work is in :mod:`sensei_airflow.mark`; the operator only turns a refusal into a failure that
is not retried and returns the mark's summary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException


class MigrationStartOperator(BaseOperator):
    """Take the migration's start mark before the forward migration writes (idempotent).

    Records the target's moment, per-table rows and checksums, sequences, the pre-migration
    backup (when the manifest asks for one, taken first) and opens the undo log (when enabled).
    A retry, or a second run, keeps the first mark; ``restart`` replaces it (audited).

    :param migration_id: the migration (templated).
    :param restart: replace an existing mark (its undo log is closed first).
    :param reason: why it is restarted (templated; recorded in the audit trail).
    """

    template_fields: Sequence[str] = ("migration_id", "reason")
    ui_color = "#d1e7dd"

    def __init__(
        self, *, migration_id: str, restart: bool = False, reason: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.migration_id = migration_id
        self.restart = restart
        self.reason = reason

    def execute(self, context: Any) -> dict[str, Any]:
        from sensei_airflow.engines.base import MarkRefused
        from sensei_airflow.manifest import load_manifests
        from sensei_airflow.mark import take_mark

        try:
            manifest = load_manifests().get(self.migration_id)
        except LookupError as exc:
            raise AirflowFailException(str(exc)) from None
        dag_run = context.get("dag_run")
        actor = getattr(dag_run, "triggering_user_name", None) or f"{self.dag_id}.{self.task_id}"
        try:
            mark, taken = take_mark(manifest, restart=self.restart, actor=actor, reason=self.reason)
        except MarkRefused as exc:
            raise AirflowFailException(str(exc)) from None
        self.log.info(
            "start mark of %s %s: %s at %s",
            manifest.id,
            "taken" if taken else "kept",
            mark.name,
            mark.position,
        )
        return {"taken": taken, **mark.summary()}
