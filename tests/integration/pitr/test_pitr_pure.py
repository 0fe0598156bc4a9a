"""The pure parts of point-in-time recovery: recovery settings, WAL arithmetic, windows, names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from sensei_airflow.engines.base import RecoveryTarget
from sensei_airflow.engines.postgres.basebackup import format_lsn, parse_lsn
from sensei_airflow.engines.postgres.cluster import postmaster_options
from sensei_airflow.engines.postgres.rds import restored_identifier
from sensei_airflow.engines.postgres.wal import archive_gap, recovery_settings, segment_name, segment_number
from sensei_airflow.manifest import Manifest, Strategy
from sensei_airflow.windows import StrategyWindow, closing_soon, describe, migration_windows

SIXTEEN_MB = 16 * 1024 * 1024


def test_target_time_is_sent_in_utc_with_an_explicit_offset():
    local = datetime(2026, 2, 2, 10, 0, 0, 250000, tzinfo=timezone(timedelta(hours=2)))
    settings = recovery_settings(RecoveryTarget(time=local), "/arch", "latest", use_restore_point=False)
    assert settings["recovery_target_time"] == "2026-02-02 08:00:00.250000+00:00"
    assert settings["recovery_target_action"] == "promote"
    assert settings["archive_mode"] == "off"
    assert settings["restore_command"] == "cp /arch/%f %p"
    assert "recovery_target_name" not in settings


def test_restore_point_replaces_the_time():
    target = RecoveryTarget(
        time=datetime(2026, 2, 2, tzinfo=UTC), restore_point="sensei_x_1", position="0/3000028"
    )
    settings = recovery_settings(target, "/a b", "current", use_restore_point=True)
    assert settings["recovery_target_name"] == "sensei_x_1"
    assert "recovery_target_time" not in settings
    assert settings["restore_command"] == "cp '/a b'/%f %p"
    assert settings["recovery_target_timeline"] == "current"


def test_an_lsn_alone_recovers_to_that_lsn():
    target = RecoveryTarget(time=datetime(2026, 2, 2, tzinfo=UTC), position="0/3000028", inclusive=False)
    settings = recovery_settings(target, "/arch", "latest", use_restore_point=True)
    assert settings["recovery_target_lsn"] == "0/3000028"
    assert settings["recovery_target_inclusive"] == "off"
    assert "recovery_target_time" not in settings and "recovery_target_name" not in settings


def test_wal_segment_arithmetic_and_gaps(tmp_path: Path):
    assert parse_lsn("1/2000028") == (1 << 32) + 0x2000028
    assert format_lsn(parse_lsn("A/FF000000")) == "A/FF000000"
    name = "0000000100000001000000FF"
    number = segment_number(name, SIXTEEN_MB)
    assert segment_name(1, number + 1, SIXTEEN_MB) == "000000010000000200000000"
    for n in range(number, number + 4):
        (tmp_path / segment_name(1, n, SIXTEEN_MB)).write_text("")
    (tmp_path / f"{name}.00000028.backup").write_text("")
    assert archive_gap(tmp_path, name, SIXTEEN_MB) is None
    (tmp_path / segment_name(1, number + 2, SIXTEEN_MB)).unlink()
    assert archive_gap(tmp_path, name, SIXTEEN_MB) == segment_name(1, number + 2, SIXTEEN_MB)
    # the newest segment the server archived is gone too: found through `through`
    (tmp_path / segment_name(1, number + 2, SIXTEEN_MB)).write_text("")
    newest = segment_name(1, number + 3, SIXTEEN_MB)
    (tmp_path / newest).unlink()
    assert archive_gap(tmp_path, name, SIXTEEN_MB) is None
    assert archive_gap(tmp_path, name, SIXTEEN_MB, through=newest) == newest


def test_postmaster_options_drop_the_data_directory(tmp_path: Path):
    (tmp_path / "postmaster.opts").write_text(
        '/usr/lib/postgresql/15/bin/postgres "-D" "/x/data" "-c" "port=5433" "-c" '
        '"archive_command=test ! -f /a/%f && cp %p /a/%f"\n'
    )
    assert postmaster_options(tmp_path) == "-c port=5433 -c 'archive_command=test ! -f /a/%f && cp %p /a/%f'"


def test_restored_instance_name_is_stable_and_valid():
    target = RecoveryTarget(time=datetime(2026, 2, 2, 7, 59, tzinfo=UTC))
    name = restored_identifier("x" * 70, target)
    assert len(name) <= 63 and name.endswith("-pitr-20260202075900")
    assert restored_identifier("shop-target", target) == "shop-target-pitr-20260202075900"


def manifest(**rollback: object) -> Manifest:
    return Manifest.model_validate(
        {
            "id": "mig_w",
            "source": {"conn_id": "s"},
            "target": {"conn_id": "t"},
            "started_at": "2026-02-02T08:00:00Z",
            "phases": [{"phase": 1, "tables": [{"source": "a", "target": "b", "key": ["id"]}]}],
            "rollback": rollback,
        }
    )


def test_windows_without_a_target_bound_by_the_manifest():
    now = datetime(2026, 2, 8, 12, tzinfo=UTC)
    windows = migration_windows(
        manifest(rollback_window_hours=168, pre_migration_backup={"enabled": True, "retention_days": 2}),
        now=now,
    )
    by_strategy = {w.strategy: w for w in windows}
    assert by_strategy[Strategy.BACKUP_RESTORE].closes_at == datetime(2026, 2, 4, 8, tzinfo=UTC)
    assert by_strategy[Strategy.BACKUP_RESTORE].limit == "pre-migration backup retention (2 d)"
    assert by_strategy[Strategy.TRUNCATE].closes_at == datetime(2026, 2, 9, 8, tzinfo=UTC)
    assert windows[0].strategy == Strategy.BACKUP_RESTORE  # earliest first
    assert "closed at 2026-02-04T08:00:00+00:00" in describe(by_strategy[Strategy.BACKUP_RESTORE], now)
    assert "open until 2026-02-09T08:00:00+00:00 (in 20.0 h" in describe(by_strategy[Strategy.TRUNCATE], now)
    soon = closing_soon(windows, now, timedelta(hours=24))
    assert {w.strategy for w in soon} == {Strategy.TRUNCATE, Strategy.REVERSE_MIGRATION}


def test_window_description_of_an_unknown_window():
    window = StrategyWindow("m", Strategy.POINT_IN_TIME, None, None, "unknown", error="archive unreachable")
    assert (
        describe(window, datetime.now(UTC))
        == "rollback window: point_in_time (all tables) unknown: archive unreachable"
    )


@pytest.mark.parametrize("bad", [{"postgres": {"wal_archive": "a"}}, {"rds": {"aws_conn_id": "x"}}])
def test_point_in_time_settings_are_validated(bad):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        manifest(point_in_time=bad)
