"""The runbook DAG's reverse migration tasks: ranges cut, staged by mapped tasks, one apply (ADR 0208)."""

from __future__ import annotations

from sensei_airflow.factories import build_rollback_dag
from sensei_airflow.manifest import ManifestSet


def test_reverse_staging_is_mapped_between_halt_and_the_one_apply() -> None:
    dag = build_rollback_dag(ManifestSet(directory="unused"))
    chunks = dag.get_task("execute_reverse_migration_chunks")
    stage = dag.get_task("execute_reverse_migration_stage")
    apply = dag.get_task("execute_reverse_migration")

    assert chunks.upstream_task_ids == {"halt"}
    assert stage.upstream_task_ids == {"execute_reverse_migration_chunks"}
    assert apply.upstream_task_ids == {"execute_reverse_migration_stage"}
    # staging is mapped over the groups the chunks task returns: one task instance per group
    assert type(stage).__name__ == "MappedOperator"
    assert stage.expand_input.value.operator is chunks
    # the other strategies still follow halt directly, and all of them lead to the fallback
    for strategy in ("truncate", "point_in_time", "backup_restore", "undo_log"):
        assert dag.get_task(f"execute_{strategy}").upstream_task_ids == {"halt"}
    assert "execute_reverse_migration" in dag.get_task("execute_fallback").upstream_task_ids
    # the task ids the README and the contract name are all still there
    for task_id in ("assess", "notify", "halt", "verify", "resume", "investigate", "document"):
        assert task_id in dag.task_ids
