"""How one sensei_backup DAG serves several per-migration schedules (ADR 0102), and the backup settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sensei_airflow.backups.jobs import BackupSettings, dag_schedule, is_due, shortest_interval
from sensei_airflow.demo import shop
from sensei_airflow.manifest import Manifest


def test_dag_schedule_is_the_common_one_or_a_fine_enough_tick() -> None:
    assert dag_schedule([]) == "@daily"
    assert dag_schedule(["@daily", "@daily"]) == "@daily"
    assert dag_schedule(["0 3 * * 1"]) == "0 3 * * 1"
    assert dag_schedule(["@daily", "@hourly"]) == "@hourly"
    assert dag_schedule(["@daily", "*/30 * * * *"]) == "*/15 * * * *"
    assert dag_schedule(["@weekly", "@daily"]) == "@daily"
    assert dag_schedule(["*/2 * * * *", "@daily"]) == "*/5 * * * *"


def test_shortest_interval() -> None:
    assert shortest_interval("@hourly") == timedelta(hours=1)
    assert shortest_interval("0 6,18 * * *") == timedelta(hours=12)


def test_a_migration_is_due_when_its_schedule_fired_since_its_last_backup() -> None:
    now = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
    assert is_due("@daily", None, now)
    assert not is_due("@daily", datetime(2026, 3, 10, 0, 5, tzinfo=UTC), now)
    assert is_due("@daily", datetime(2026, 3, 9, 23, 59, tzinfo=UTC), now)
    assert is_due("@hourly", datetime(2026, 3, 10, 11, 59, tzinfo=UTC), now)
    assert not is_due("@hourly", datetime(2026, 3, 10, 12, 0, 1, tzinfo=UTC), now)


def test_settings_merge_the_two_manifest_blocks() -> None:
    plain = Manifest.model_validate(shop.manifest())
    assert not BackupSettings.of(plain).before_start and not BackupSettings.of(plain).scheduled
    enabled = Manifest.model_validate(
        shop.manifest(pre_migration_backup="s3://b/p/", backup_schedule="@hourly")
    )
    settings = BackupSettings.of(enabled)
    assert settings.before_start and settings.scheduled
    assert (settings.location, settings.schedule, settings.type) == ("s3://b/p/", "@hourly", "logical")
    legacy = shop.manifest(backup_location="/srv/backups")
    legacy["rollback"] |= {"backup_before_start": True, "backup_type": "physical"}
    settings = BackupSettings.of(Manifest.model_validate(legacy))
    assert settings.before_start and not settings.scheduled
    assert (settings.location, settings.type, settings.schedule) == ("/srv/backups", "physical", "@daily")
