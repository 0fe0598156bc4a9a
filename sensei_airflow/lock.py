"""One rollback per migration, for real: the migration lock, its heartbeat, and the fence around changes.

The lock is a row of ``sensei.rollback_locks`` in the state store (ADR 0402, ADR 0406):

* **Acquire** is atomic: ``INSERT ... ON CONFLICT DO NOTHING`` takes a free lock; an existing row
  is taken over only when it has expired, under ``FOR UPDATE`` in the same transaction. Every
  acquisition draws a new *fencing token* from a sequence; the plan carries it.
* **Heartbeat**: while a runbook step works, a thread with its own state-store connection extends
  ``expires_at`` every third of the TTL (bounded), as long as the row still carries the run's
  token. A crashed step stops renewing, so its lock expires after ``[sensei] lock_ttl_seconds``
  unless ``sensei lock release MIGRATION_ID --force`` clears it sooner.
* **Fence**: every change to a database happens inside :meth:`MigrationLocks.fence`. It checks
  that the row still carries the run's token and holds it ``FOR KEY SHARE`` in a state-store
  transaction that stays open until the change is over, so a takeover (which deletes the row)
  cannot happen in between; heartbeat updates of ``expires_at`` do not conflict with that lock. On
  each PostgreSQL database being changed it also holds a session advisory lock keyed by the
  migration, on a dedicated connection, so two runs never change one database at once even if
  the state store is gone (the lock ends with the connection when a process dies).
"""

from __future__ import annotations

import getpass
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, closing, contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sensei_airflow.engines.base import ChangeLockHeld, Engine
from sensei_airflow.plan import RefusedError
from sensei_airflow.state import StateStore, change_lock_key

log = logging.getLogger(__name__)

#: how long a fence or an acquire waits for the lock row held by a short transaction elsewhere.
ROW_LOCK_TIMEOUT = "30s"
#: how long a takeover or a forced release waits for the row before calling it busy (in a fence).
BUSY_WAIT = "2s"
#: bounds of the heartbeat interval (a third of the TTL in between).
MIN_BEAT = timedelta(seconds=0.5)
MAX_BEAT = timedelta(seconds=60)

_COLUMNS = "rollback_id, token, acquired_at, expires_at, renewed_at, expires_at <= now()"
_INSERT = (
    "INSERT INTO sensei.rollback_locks (migration_id, rollback_id, token, acquired_at, expires_at, renewed_at) "
    "VALUES (%s, %s, nextval('sensei.rollback_lock_tokens'), now(), now() + %s, now())"
)
_RETURNING = " RETURNING " + _COLUMNS
_EXTEND = (
    "UPDATE sensei.rollback_locks SET expires_at = now() + %s, renewed_at = now() WHERE migration_id = %s"
)


@dataclass(frozen=True)
class MigrationLock:
    """The run that holds a migration's rollback lock, its fencing token, and until when."""

    migration_id: str
    rollback_id: str
    token: int
    acquired_at: datetime
    expires_at: datetime
    renewed_at: datetime | None
    #: the lock had run out when it was read (by the state store's clock).
    expired: bool

    def details(self) -> str:
        """``token N, since T, last renewed at T2, expires at E``."""
        renewed = f", last renewed at {self.renewed_at.isoformat()}" if self.renewed_at else ""
        ends = "expired at" if self.expired else "expires at"
        return (
            f"token {self.token}, since {self.acquired_at.isoformat()}{renewed}, {ends} "
            f"{self.expires_at.isoformat()}"
        )

    def describe(self) -> str:
        """``rollback R (token N, since T, last renewed at T2, expires at E)``."""
        return f"rollback {self.rollback_id} ({self.details()})"

    def as_json(self) -> dict[str, Any]:
        return {
            "migration_id": self.migration_id,
            "rollback_id": self.rollback_id,
            "token": self.token,
            "acquired_at": self.acquired_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "renewed_at": self.renewed_at.isoformat() if self.renewed_at else None,
            "expired": self.expired,
        }


@dataclass(frozen=True)
class Acquired:
    """A lock just taken: the lock itself, and the expired lock it replaced (if any)."""

    lock: MigrationLock
    took_over: MigrationLock | None = None


def release_command(migration_id: str) -> str:
    return f"sensei lock release {migration_id} --force --reason '...'"


class LockHeld(Exception):
    """Another rollback of the same migration holds the lock."""

    def __init__(self, lock: MigrationLock, *, busy: bool = False) -> None:
        self.lock = lock
        self.busy = busy
        if busy:
            text = (
                f"rollback {lock.rollback_id} of {lock.migration_id} is changing the databases right now: its "
                f"lock has run out but one of its steps still holds it in use ({lock.details()})"
            )
        else:
            text = f"rollback {lock.rollback_id} of {lock.migration_id} is already running ({lock.details()})"
        super().__init__(text)


class LockLost(RefusedError):
    """This run no longer holds its migration's lock (or another session is changing the database)."""


class LockUnverified(Exception):
    """The state store does not answer: whether this run still holds its lock cannot be checked.

    Not a refusal: a retry goes on once the state store answers again.
    """


def beat_interval(ttl: timedelta) -> timedelta:
    """A third of the TTL, at least :data:`MIN_BEAT` and at most :data:`MAX_BEAT`."""
    return max(MIN_BEAT, min(MAX_BEAT, ttl / 3))


def os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name for this uid (containers)
        return "unknown"


class MigrationLocks:
    """The rollback locks of the migrations whose state store is ``state``."""

    def __init__(self, state: StateStore) -> None:
        self.state = state

    # -- reading -------------------------------------------------------------------------------
    @staticmethod
    def _read(cur: Any, migration_id: str, lock: str = "") -> MigrationLock | None:
        cur.execute(
            f"SELECT {_COLUMNS} FROM sensei.rollback_locks WHERE migration_id = %s {lock}",  # noqa: S608
            (migration_id,),
        )
        row = cur.fetchone()
        return None if row is None else MigrationLock(migration_id, *row)

    def holder(self, migration_id: str) -> MigrationLock | None:
        """The lock of the migration as it is now, or ``None`` when no rollback holds it."""
        with self.state.transaction() as cur:
            return self._read(cur, migration_id)

    # -- taking and giving back ---------------------------------------------------------------
    def acquire(self, migration_id: str, rollback_id: str, ttl: timedelta) -> Acquired:
        """Take the migration's lock for ``ttl``, atomically, or raise :class:`LockHeld`.

        A free lock is taken by one ``INSERT ... ON CONFLICT DO NOTHING``: of two runs racing for
        it, exactly one inserts. The holder itself may take it again (a retried assess keeps its
        token). An expired lock of another run is taken over (the returned ``took_over`` says
        whose), unless one of that run's steps still holds it in use (an open fence): then it is
        refused as busy instead of waiting.
        """
        for _ in range(5):
            with self.state.transaction() as cur:
                cur.execute("SELECT set_config('lock_timeout', %s, true)", (ROW_LOCK_TIMEOUT,))
                cur.execute(
                    _INSERT + " ON CONFLICT (migration_id) DO NOTHING" + _RETURNING,
                    (migration_id, rollback_id, ttl),
                )
                row = cur.fetchone()
                if row is not None:
                    return Acquired(MigrationLock(migration_id, *row))
                seen = self._read(cur, migration_id)
                if seen is None:  # released in between: try again
                    continue
                if seen.rollback_id != rollback_id and not seen.expired:
                    raise LockHeld(seen)
                locked = self._lock_row(cur, migration_id, seen)
                if locked is None:
                    continue
                if locked.rollback_id == rollback_id:
                    cur.execute(_EXTEND + _RETURNING, (ttl, migration_id))
                    return Acquired(MigrationLock(migration_id, *cur.fetchone()))
                if not locked.expired:
                    raise LockHeld(locked)
                cur.execute("DELETE FROM sensei.rollback_locks WHERE migration_id = %s", (migration_id,))
                cur.execute(_INSERT + _RETURNING, (migration_id, rollback_id, ttl))
                return Acquired(MigrationLock(migration_id, *cur.fetchone()), took_over=locked)
        raise RuntimeError(f"the lock of {migration_id} changed hands too often to be taken; try again")

    def _lock_row(self, cur: Any, migration_id: str, seen: MigrationLock) -> MigrationLock | None:
        """The row ``FOR UPDATE``; :class:`LockHeld` (busy) while a fence holds it in use.

        The wait is bounded by :data:`BUSY_WAIT`: long enough for a heartbeat's update, far
        shorter than a fence, which lasts as long as its change.
        """
        import psycopg.errors

        cur.execute("SELECT set_config('lock_timeout', %s, true)", (BUSY_WAIT,))
        try:
            return self._read(cur, migration_id, "FOR UPDATE")
        except psycopg.errors.LockNotAvailable:
            raise LockHeld(seen, busy=True) from None

    def renew(self, migration_id: str, token: int, ttl: timedelta, conn: Any = None) -> bool:
        """Extend the lock while it still carries ``token``; ``False`` once it does not.

        An expired lock that still carries the token is renewed too: nobody took it in between
        (a takeover draws a new token).

        :param conn: an open state-store connection (the heartbeat's own); a new one if not given.
        """
        sql = _EXTEND + " AND token = %s"
        if conn is None:
            with self.state.transaction() as cur:
                cur.execute(sql, (ttl, migration_id, token))
                return cur.rowcount == 1
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(sql, (ttl, migration_id, token))
            return cur.rowcount == 1

    def release(self, migration_id: str, token: int) -> bool:
        """Give the lock back, only while it still carries ``token``; ``True`` when it did."""
        with self.state.transaction() as cur:
            cur.execute(
                "DELETE FROM sensei.rollback_locks WHERE migration_id = %s AND token = %s",
                (migration_id, token),
            )
            return cur.rowcount == 1

    def force_release(self, migration_id: str, *, actor: str, reason: str | None) -> MigrationLock | None:
        """Clear the migration's lock whoever holds it (a crashed run), and audit who did and why.

        Refused (:class:`LockHeld`, busy) while one of the holder's steps is changing a database
        (it holds the lock in use): that run is alive. Returns the lock released, or ``None`` when
        the migration had none.
        """
        from sensei_airflow.audit import AuditEvent, AuditTrail

        with self.state.transaction() as cur:
            cur.execute("SELECT set_config('lock_timeout', %s, true)", (ROW_LOCK_TIMEOUT,))
            seen = self._read(cur, migration_id)
            if seen is None:
                return None
            released = self._lock_row(cur, migration_id, seen)
            if released is None:
                return None
            cur.execute(
                "DELETE FROM sensei.rollback_locks WHERE migration_id = %s AND token = %s",
                (migration_id, released.token),
            )
        AuditTrail(self.state).append(
            AuditEvent(
                step="lock",
                action="lock released by force",
                rollback_id=released.rollback_id,
                migration_id=migration_id,
                actor=actor,
                reason=reason,
                detail={"released": released.as_json(), "released_by": actor, "why": reason},
            )
        )
        return released

    # -- the fence ------------------------------------------------------------------------------
    @contextmanager
    def fence(
        self,
        migration_id: str,
        rollback_id: str,
        token: int | None,
        ttl: timedelta,
        databases: Sequence[Engine] = (),
        *,
        shared: bool = False,
    ) -> Iterator[None]:
        """Run the block (a change to ``databases``) only while this run holds the migration's lock.

        :raises LockLost: (a refusal) before anything is changed when the lock no longer carries
            ``token``, or when another session holds the migration's change lock on one of
            ``databases`` (in a mode that conflicts: ``shared`` holds it in share mode, as the
            mapped staging tasks of one run do together).
        :raises LockUnverified: when the state store does not answer, before the change; or after
            the block when the state store went away while it ran.
        """
        import psycopg

        if token is None:
            raise LockLost(
                f"rollback {rollback_id} has no lock token in its plan: it cannot prove it holds the lock "
                f"of migration {migration_id}; nothing is changed; start a new rollback"
            )
        with ExitStack() as stack:
            try:
                self.renew(migration_id, token, ttl)
                self.state.ensure_schema()
                conn = stack.enter_context(closing(self.state.hook.get_conn()))
                cur = conn.cursor()
                cur.execute("SELECT set_config('lock_timeout', %s, true)", (ROW_LOCK_TIMEOUT,))
                held = self._read(cur, migration_id, "FOR KEY SHARE")
            except psycopg.Error as exc:
                raise LockUnverified(
                    f"cannot check that rollback {rollback_id} still holds the lock of migration "
                    f"{migration_id}: the state store ({self.state.conn_id}) does not answer "
                    f"({type(exc).__name__}: {_first_line(exc)}); nothing more is changed"
                ) from None
            if held is None or held.token != token or held.expired:
                raise LockLost(lost_message(migration_id, rollback_id, token, held))
            for engine in databases:
                try:
                    stack.enter_context(
                        engine.hold_change_lock(
                            change_lock_key(migration_id), f"sensei {rollback_id}", shared=shared
                        )
                    )
                except ChangeLockHeld as exc:
                    raise LockLost(
                        f"rollback {rollback_id} cannot change {engine.conn_id}: {exc}; another rollback of "
                        f"migration {migration_id} is changing it now; nothing is changed"
                    ) from None
            yield
            try:
                conn.commit()
            except psycopg.Error as exc:
                raise LockUnverified(
                    f"the state store ({self.state.conn_id}) went away while rollback {rollback_id} changed "
                    f"the databases of migration {migration_id}: that change finished, but nothing more is "
                    f"changed until the state store answers ({type(exc).__name__}: {_first_line(exc)})"
                ) from None


def lost_message(migration_id: str, rollback_id: str, token: int, held: MigrationLock | None) -> str:
    """The one line a run that lost its lock stops with."""
    if held is None:
        why = (
            f"rollback {rollback_id} no longer holds the lock of migration {migration_id} (token {token}): "
            "it was released (sensei lock release --force, or its run ended)"
        )
    elif held.token != token:
        why = (
            f"rollback {rollback_id} lost the lock of migration {migration_id} to {held.describe()}, "
            f"after its own lock (token {token}) ran out"
        )
    else:
        why = (
            f"rollback {rollback_id}'s lock of migration {migration_id} ran out at "
            f"{held.expires_at.isoformat()} and could not be renewed"
        )
    return f"{why}; nothing more is changed; start a new rollback once the other one has ended"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class Heartbeat:
    """Keeps a run's lock alive while one of its steps works: a daemon thread renewing ``expires_at``.

    :meth:`start` renews once at once (a step that starts without its lock says so right away);
    the thread then renews every :func:`beat_interval` on its own state-store connection, while
    the lock still carries ``token``. Once it does not, the thread calls ``on_lost`` and stops; the
    step fails at its next fence. A state store that does not answer is retried at the next beat.

    :param on_lost: called (from the thread) with the lock as it is now (``None``: released).
    """

    def __init__(
        self,
        locks: MigrationLocks,
        migration_id: str,
        token: int,
        ttl: timedelta,
        on_lost: Callable[[MigrationLock | None], None] | None = None,
    ) -> None:
        self.locks = locks
        self.migration_id = migration_id
        self.token = token
        self.ttl = ttl
        self.on_lost = on_lost
        self.interval = beat_interval(ttl)
        self.lost = False
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conn: Any = None

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> bool:
        """Renew now and start the thread; ``False`` (and ``on_lost``) when the lock is not ours."""
        if not self._beat():
            return False
        self._thread = threading.Thread(
            target=self._run, name=f"sensei-lock-heartbeat-{self.migration_id}", daemon=True
        )
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval.total_seconds() + 30)
        if self._conn is not None:
            with suppress(Exception):
                self._conn.close()
            self._conn = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval.total_seconds()):
            if not self._beat():
                return

    def _beat(self) -> bool:
        """One renewal; ``False`` only when the lock is known to be lost."""
        try:
            if self._conn is None or self._conn.closed:
                self.locks.state.ensure_schema()
                self._conn = self.locks.state.hook.get_conn()
            renewed = self.locks.renew(self.migration_id, self.token, self.ttl, conn=self._conn)
        except Exception as exc:  # the state store is away: the next beat tries again
            log.warning(
                "could not renew the lock of %s (token %s): %s: %s",
                self.migration_id,
                self.token,
                type(exc).__name__,
                _first_line(exc),
            )
            if self._conn is not None:
                with suppress(Exception):
                    self._conn.close()
                self._conn = None
            return True
        if renewed:
            self.beats += 1
            return True
        self.lost = True
        holder: MigrationLock | None = None
        with suppress(Exception):
            holder = self.locks.holder(self.migration_id)
        log.warning("%s", lost_message(self.migration_id, "this run", self.token, holder))
        if self.on_lost is not None:
            try:
                self.on_lost(holder)
            except Exception:
                log.exception("could not record that the lock of %s was lost", self.migration_id)
        return False
