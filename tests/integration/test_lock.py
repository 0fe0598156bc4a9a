"""The migration lock on a real PostgreSQL state store: atomic acquire, takeover, heartbeat, fence.

Each test works on its own state database (``databases`` fixture); the advisory change lock is
taken on the target database of the same fixture.
"""

from __future__ import annotations

import re
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from sensei_airflow import cli
from sensei_airflow.audit import AuditTrail
from sensei_airflow.engines import get_engine
from sensei_airflow.engines.base import ChangeLockHeld
from sensei_airflow.lock import (
    Heartbeat,
    LockHeld,
    LockLost,
    MigrationLock,
    MigrationLocks,
    change_lock_key,
)
from sensei_airflow.state import StateStore

MIG = "mig_kundendaten_2026"
RUN_A = "manual__2026-12-02T10:00:00.123456+00:00"
RUN_B = "scheduled__Zoë's retry 2026-12-02T10:05:00+00:00"
LONG = timedelta(minutes=10)


@pytest.fixture
def locks(databases) -> MigrationLocks:
    store = StateStore("sensei_state")
    store.ensure_schema()
    return MigrationLocks(store)


def wait_until(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def expire_now(databases, migration_id: str = MIG) -> None:
    """The holder "crashed" long ago: its lock ran out (a non-key update, like a heartbeat's)."""
    with databases.connect("state") as conn:
        conn.execute(
            "UPDATE sensei.rollback_locks SET expires_at = now() - interval '1 second' WHERE migration_id = %s",
            (migration_id,),
        )


def test_two_first_acquires_at_the_same_moment_exactly_one_wins(databases, locks):
    """Two runs race for a lock nobody held yet, many times over: never both win."""
    for round_ in range(12):
        migration = f"mig_race_{round_}"
        barrier = threading.Barrier(2)
        won: list[str] = []
        refused: list[LockHeld] = []

        def take(
            run: str,
            migration: str = migration,
            barrier: threading.Barrier = barrier,
            won: list[str] = won,
            refused: list[LockHeld] = refused,
        ) -> None:
            store = StateStore("sensei_state")
            store.ensure_schema()  # the race is the acquire, not the schema
            contender = MigrationLocks(store)
            barrier.wait()
            try:
                contender.acquire(migration, run, LONG)
                won.append(run)
            except LockHeld as exc:
                refused.append(exc)

        threads = [threading.Thread(target=take, args=(run,)) for run in (RUN_A, RUN_B)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert len(won) == 1, f"round {round_}: {won} both took the lock of {migration}"
        assert len(refused) == 1
        assert refused[0].lock.rollback_id == won[0]
        assert locks.holder(migration).rollback_id == won[0]


def test_takeover_only_after_expiry_and_with_a_new_token(databases, locks):
    first = locks.acquire(MIG, RUN_A, LONG).lock
    again = locks.acquire(MIG, RUN_A, LONG)  # a retried assess of the holder keeps its token
    assert again.lock.token == first.token and again.took_over is None
    with pytest.raises(LockHeld, match=re.escape(f"rollback {RUN_A} of {MIG} is already running (token")):
        locks.acquire(MIG, RUN_B, LONG)
    other = locks.acquire("mig_other", RUN_B, LONG)  # other migrations are free
    assert other.lock.token != first.token

    expire_now(databases)
    taken = locks.acquire(MIG, RUN_B, LONG)

    assert taken.took_over is not None and taken.took_over.rollback_id == RUN_A
    assert taken.took_over.token == first.token
    assert taken.lock.token > first.token
    assert locks.holder(MIG).rollback_id == RUN_B
    # the old holder can neither renew nor release the new holder's lock
    assert not locks.renew(MIG, first.token, LONG)
    assert not locks.release(MIG, first.token)
    assert locks.release(MIG, taken.lock.token)
    assert locks.holder(MIG) is None


def test_heartbeat_keeps_a_lock_alive_beyond_its_ttl_and_stops_after_losing_it(databases, locks):
    ttl = timedelta(seconds=1.5)  # a beat every 0.5 s
    token = locks.acquire(MIG, RUN_A, ttl).lock.token
    lost: list[MigrationLock | None] = []
    heartbeat = Heartbeat(locks, MIG, token, ttl, on_lost=lost.append)
    assert heartbeat.start()
    try:
        # more beats than fit in one TTL: without them the lock would have run out by now
        wait_until(lambda: heartbeat.beats >= 6, "six heartbeats")
        assert not locks.holder(MIG).expired
        with pytest.raises(LockHeld, match="is already running"):
            locks.acquire(MIG, RUN_B, ttl)

        released = locks.force_release(MIG, actor="Zoë O'Brien", reason="testing the heartbeat")
        assert released is not None and released.token == token
        newcomer = locks.acquire(MIG, RUN_B, LONG).lock
        wait_until(lambda: heartbeat.lost, "the heartbeat to notice its lock is gone")
    finally:
        heartbeat.stop()

    assert heartbeat._thread is not None and not heartbeat._thread.is_alive()
    assert lost and lost[0] is not None and lost[0].rollback_id == RUN_B
    # it stopped extending: the newcomer's lock is exactly as it took it
    assert locks.holder(MIG).expires_at == newcomer.expires_at
    assert not Heartbeat(locks, MIG, token, ttl).start()  # a step starting without its lock knows at once


def test_a_fence_refuses_after_a_takeover_with_a_one_line_reason(databases, locks):
    token_a = locks.acquire(MIG, RUN_A, LONG).lock.token
    with locks.fence(MIG, RUN_A, token_a, LONG):
        pass  # holds: nothing raised
    expire_now(databases)
    token_b = locks.acquire(MIG, RUN_B, LONG).lock.token
    changed: list[str] = []

    with pytest.raises(LockLost) as refused, locks.fence(MIG, RUN_A, token_a, LONG):
        changed.append("A changed something")

    assert changed == []
    reason = str(refused.value)
    assert "\n" not in reason
    assert reason.startswith(
        f"rollback {RUN_A} lost the lock of migration {MIG} to rollback {RUN_B} (token {token_b}"
    )
    assert "nothing more is changed" in reason
    with locks.fence(MIG, RUN_B, token_b, LONG):
        changed.append("B changed something")
    assert changed == ["B changed something"]


def test_a_takeover_cannot_happen_while_a_fence_is_open(databases, locks):
    token = locks.acquire(MIG, RUN_A, LONG).lock.token
    with locks.fence(MIG, RUN_A, token, LONG):
        expire_now(databases)  # the holder's lock ran out while its change is still going on
        assert locks.holder(MIG).expired
        with pytest.raises(LockHeld, match="is changing the databases right now") as busy:
            locks.acquire(MIG, RUN_B, LONG)
        assert busy.value.busy
        with pytest.raises(LockHeld, match="is changing the databases right now"):
            locks.force_release(MIG, actor="dba", reason="looked dead")
        # a heartbeat still renews (no conflict with the fence), and a fresh state store client
        # (which creates the schema if missing) neither waits for the fence
        fresh: list[Any] = []
        reader = threading.Thread(
            target=lambda: fresh.append(MigrationLocks(StateStore("sensei_state")).holder(MIG))
        )
        reader.start()
        reader.join(60)
        assert fresh and fresh[0].rollback_id == RUN_A
        assert locks.renew(MIG, token, LONG)
        expire_now(databases)
    taken = locks.acquire(MIG, RUN_B, LONG)  # the fence is closed: the expired lock is taken over
    assert taken.took_over is not None and taken.took_over.token == token


def test_the_change_lock_on_a_postgres_database_refuses_a_second_holder(databases, locks):
    target = get_engine("shop_target")
    key = change_lock_key(MIG)
    with target.hold_change_lock(key, f"sensei {RUN_A}"):
        with (
            pytest.raises(ChangeLockHeld, match=r"held by session \d+ \(sensei manual__2026-12-02T10:00"),
            target.hold_change_lock(key, f"sensei {RUN_B}"),
        ):
            pass
        # through the fence: a run holding the state store's lock still may not change a database
        # that another session (a stale process of an older run) is changing
        token = locks.acquire(MIG, RUN_B, LONG).lock.token
        with (
            pytest.raises(
                LockLost, match=re.escape(f"rollback {RUN_B} cannot change shop_target: its change lock")
            ),
            locks.fence(MIG, RUN_B, token, LONG, [target]),
        ):
            pytest.fail("the fence let a second holder in")
    # other migrations have their own key
    with (
        target.hold_change_lock(change_lock_key("mig_other"), "sensei other"),
        locks.fence(MIG, RUN_B, token, LONG, [target]),
    ):
        with databases.connect("target") as conn:
            holders = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            ).fetchone()[0]
        assert holders == 2


def test_the_change_lock_ends_with_its_connection(databases):
    """A killed process's change lock does not outlive it: its connection ends, the lock with it."""
    target = get_engine("shop_target")
    key = change_lock_key(MIG)
    holder = psycopg.connect(databases.cluster.dsn(databases.target), autocommit=True)
    holder.execute("SELECT pg_advisory_lock(%s)", (key,))
    with pytest.raises(ChangeLockHeld), target.hold_change_lock(key, "sensei second"):
        pass
    holder.close()
    with target.hold_change_lock(key, "sensei second"):
        pass


def test_lock_release_needs_force_and_is_audited(databases, locks, capsys):
    token = locks.acquire(MIG, RUN_A, LONG).lock.token

    assert cli.main(["lock", "release", MIG, "--conn-id", "sensei_state"]) == 1
    err = capsys.readouterr().err
    assert f"refused without --force: {MIG} is locked by rollback {RUN_A} (token {token}" in err
    assert f"sensei lock release {MIG} --force" in err
    assert locks.holder(MIG).token == token

    assert cli.main(["lock", "status", MIG, "--conn-id", "sensei_state"]) == 0
    assert f"{MIG}: held by rollback {RUN_A} (token {token}" in capsys.readouterr().out

    args = ["lock", "release", MIG, "--force", "--reason", "worker lost at 03:12", "--actor", "Zoë O'Brien"]
    assert cli.main([*args, "--conn-id", "sensei_state"]) == 0
    out = capsys.readouterr().out
    assert f"released the lock of {MIG} held by rollback {RUN_A}" in out
    assert locks.holder(MIG) is None
    events = [e for e in AuditTrail(locks.state).events(RUN_A) if e["action"] == "lock released by force"]
    assert len(events) == 1
    event = events[0]
    assert (event["actor"], event["reason"], event["migration_id"]) == (
        "Zoë O'Brien",
        "worker lost at 03:12",
        MIG,
    )
    assert event["detail"]["released"]["token"] == token
    assert AuditTrail(locks.state).verify().ok

    assert cli.main(["lock", "release", MIG, "--force", "--conn-id", "sensei_state"]) == 0
    assert "no rollback holds the lock" in capsys.readouterr().out
