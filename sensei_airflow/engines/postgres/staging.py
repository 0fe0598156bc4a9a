"""Reverse migration staging in parts, for several tasks at once (ADR 0208).

:class:`~sensei_airflow.engines.postgres.reverse.PostgresReverseWriter` stages and applies a
reverse migration in one task. Spread over Airflow's workers, the staging is done by several
mapped tasks first, each taking a share of the chunks, and the writer's apply (``migrate``)
then finds every chunk checkpointed and only applies them. Everything a staging task leaves
behind is on the source: the chunk's staging table and its checkpoint row
(``sensei_staging.reverse_chunks``), both written in one transaction, so any worker can pick
up where another stopped and nothing on a worker's own disk is needed later.

Which chunks a task takes is decided from the checkpoint table alone: chunks are numbered in
the order of the tables (parents first) and then by chunk, and task ``group`` of ``groups``
takes every chunk whose position modulo ``groups`` is ``group``. The XCom between the tasks is
two integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import ExitStack
from typing import Any

from sensei_airflow.engines.base import ReverseTable
from sensei_airflow.engines.postgres import catalog
from sensei_airflow.engines.postgres.copy import session
from sensei_airflow.engines.postgres.reverse import (
    PostgresReverseWriter,
    PostgresRowSource,
    StagingOwner,
    _TableRun,
)
from sensei_airflow.verify import KeyRange


class _StageOnly:
    """Stands in for the writer's applier: a staging task only stages, the apply task applies."""

    #: a staging task stages every chunk it is given (the direct copy is the apply task's own)
    direct = False

    def check(self) -> None:
        """Nothing to check: no apply transaction runs beside a staging task."""

    def put(self, table: ReverseTable, chunk: int, key_range: KeyRange, state: str) -> None:
        """The chunk is checkpointed on the source; the apply task reads it from there."""


def _has_rows(writer: PostgresReverseWriter, table: ReverseTable) -> bool:
    """Whether the source table holds rows: only then can a chunk be found unchanged and left unmoved.

    The apply task decides for itself, under its locks, which tables it loads in bulk; a staging
    task only needs to know whether comparing is worth it.
    """
    return bool(writer._read(catalog.has_rows, writer.engine.quote_table(table.source)))


class PostgresChunkStager:
    """Cuts the tables of a reverse migration into chunks and stages a share of them.

    :param writer: the source's reverse writer (its ``chunk_rows`` sets the chunk size).
    """

    def __init__(self, writer: PostgresReverseWriter) -> None:
        self.writer = writer

    def plan(self, rollback_id: str, tables: Sequence[ReverseTable], readers: dict[str, Any]) -> int:
        """Cut every table into chunks (kept from an earlier try); the number of chunks in all."""
        return sum(
            len(self.writer.plan_chunks(rollback_id, table, readers[table.source])) for table in tables
        )

    def stage(
        self,
        rollback_id: str,
        tables: Sequence[ReverseTable],
        readers: dict[str, Any],
        *,
        group: int,
        groups: int,
        migration_id: str | None = None,
    ) -> dict[str, dict[str, int]]:
        """Stage this group's chunks; chunks already staged (an earlier try) are left as they are.

        A chunk is staged in one source transaction with its checkpoint: a retry redoes the chunk
        a killed try was in (its half-written staging table was rolled back) and nothing else.

        :param group: which share, ``0 <= group < groups``.
        :param groups: how many tasks share the chunks.
        :returns: per target table, the chunks ``staged``, ``same`` (unchanged, not moved) and
            ``resumed`` (checkpointed by an earlier try).
        """
        if not 0 <= group < groups:
            raise ValueError(f"staging group {group} is not one of {groups}")
        writer = self.writer
        owner = StagingOwner(migration_id, rollback_id)
        outcomes: dict[str, dict[str, int]] = {}
        position = 0
        for table in tables:
            reader = readers[table.source]
            # planned by the chunks task; cut again (identically) if a server crash emptied the checkpoints
            chunks = writer.plan_chunks(rollback_id, table, reader)
            mine = [c for i, c in enumerate(chunks, start=position) if i % groups == group]
            position += len(chunks)
            if not mine:
                continue
            relayed = isinstance(reader, PostgresRowSource)
            with ExitStack() as stack:
                run = _TableRun(
                    owner=owner,
                    rollback_id=rollback_id,
                    table=table,
                    reader=reader,
                    applier=_StageOnly(),  # type: ignore[arg-type]
                    conn=stack.enter_context(writer._session()),
                    source_conn=stack.enter_context(session(reader.engine)) if relayed else None,
                    compare=relayed and _has_rows(writer, table),
                    source_side=writer.source_reader(table),
                    shape=writer.column_types(table.source),
                )
                for number, key_range, state, _rows in mine:
                    writer._stage_chunk(run, number, key_range, state)
            outcomes[table.target] = run.outcome
        return outcomes
