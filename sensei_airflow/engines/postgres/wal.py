"""The WAL side of point-in-time recovery on PostgreSQL: the archive, and replaying it to a target.

Segment names and the archive's completeness (a gap makes replay stop short: refused before
anything changes), closing the current segment and waiting for it in the archive (without it
recovery ends before the target, ENVIRONMENT.md), and the recovery settings that stop at the
target and promote.
"""

from __future__ import annotations

import os
import re
import shlex
import time
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING

from sensei_airflow.engines.base import PointInTimeRefused, RecoveryTarget

if TYPE_CHECKING:
    from sensei_airflow.engines.postgres import PostgresEngine

SEGMENT = re.compile(r"^[0-9A-F]{24}$")


def segment_number(name: str, segment_size: int) -> int:
    per_log = 0x100000000 // segment_size
    return int(name[8:16], 16) * per_log + int(name[16:24], 16)


def segment_name(timeline: int, number: int, segment_size: int) -> str:
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_log:08X}{number % per_log:08X}"


def archived_segments(folder: str | os.PathLike[str]) -> list[str]:
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if SEGMENT.match(p.name))


def archive_gap(
    folder: str | os.PathLike[str], start_wal_file: str, segment_size: int, through: str | None = None
) -> str | None:
    """The first segment missing from ``start_wal_file`` to the newest archived one, or None.

    :param through: the last segment the server reports archived (``pg_stat_archiver``): the
        archive must hold it too, so a deleted newest segment is found as well.
    """
    names = archived_segments(folder)
    numbers = {segment_number(n, segment_size) for n in names}
    first = segment_number(start_wal_file, segment_size)
    newest = max(numbers, default=first)
    if through and SEGMENT.match(through):
        newest = max(newest, segment_number(through, segment_size))
    for number in range(first, newest + 1):
        if number not in numbers:
            return segment_name(int(start_wal_file[:8], 16), number, segment_size)
    return None


def recovery_settings(
    target: RecoveryTarget, wal_archive: str, timeline: str, *, use_restore_point: bool
) -> dict[str, str]:
    """Server settings that recover to ``target`` and promote (never pause)."""
    settings = {
        "restore_command": f"cp {shlex.quote(str(Path(wal_archive).resolve()))}/%f %p",
        "recovery_target_action": "promote",
        "recovery_target_timeline": timeline,
        "archive_mode": "off",  # a scratch cluster must never write into the live archive
        "hot_standby": "on",
    }
    if use_restore_point and target.restore_point:
        settings["recovery_target_name"] = target.restore_point
    elif use_restore_point and target.position:
        settings["recovery_target_lsn"] = target.position
        settings["recovery_target_inclusive"] = "on" if target.inclusive else "off"
    else:
        # explicit UTC offset: a naive time would be read in the server's time zone
        settings["recovery_target_time"] = target.time.astimezone(UTC).isoformat(sep=" ")
        settings["recovery_target_inclusive"] = "on" if target.inclusive else "off"
    return settings


def switch_and_wait(engine: PostgresEngine, wal_archive: str, wait_seconds: float) -> str:
    """Close the current WAL segment and wait until it is archived; returns its name.

    :raises PointInTimeRefused: when it is not archived within ``wait_seconds`` (nothing changed).
    """
    with engine.connect() as conn:
        conn.autocommit = True
        segment = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        deadline = time.monotonic() + wait_seconds
        while not (Path(wal_archive) / segment).exists():
            row = conn.execute(
                "SELECT last_archived_wal, last_failed_wal, last_failed_time FROM pg_stat_archiver"
            ).fetchone()
            if row[0] is not None and row[0] >= segment and row[0][:8] == segment[:8]:
                break
            if time.monotonic() > deadline:
                raise PointInTimeRefused(
                    f"WAL segment {segment} was not archived within "
                    f"{wait_seconds:g} s (last failed: {row[1]} at {row[2]}): "
                    "the live target is unchanged"
                )
            time.sleep(0.05)
    return str(segment)
