"""The sensei REST API, served by Airflow's api-server under ``/sensei``.

Endpoints (the seed's API, prefixed with ``/sensei``):

- ``GET  /sensei/v1/migrations``: the migrations, their rollback windows and newest backups;
- ``POST /sensei/v1/migrations/{id}/rollback``: start a ``sensei_rollback`` run with the seed's body
  (409 while ``sensei_rollback`` is paused, unless ``?unpause=true`` asks to unpause it, audited);
- ``GET  /sensei/v1/migrations/{id}/rollback/status``: the status document of the newest rollback;
- ``GET  /sensei/v1/migrations/{id}/rollback/plan``: the dry-run plan, without starting anything;
- ``POST /sensei/v1/migrations/{id}/start``: take the migration's start mark (trigger permission).

Every endpoint sits behind Airflow's own authentication (a JWT from ``POST /auth/token``, or the
UI's session cookie) and the auth manager's permissions on the ``sensei_rollback`` DAG: reading
statuses and the listing needs read access to its runs; starting a rollback, and asking for a
plan (which reads the target and the backups as a rollback's assess does), needs the right to
trigger it. The OpenAPI document is served at ``/sensei/openapi.json`` to readers only; the
interactive docs pages are off. The body is validated by
:class:`~sensei_airflow.conf.RollbackRequest`, the model the DAG's form is generated from, so the
API accepts exactly what a run would accept; bodies over :data:`MAX_BODY_BYTES` are refused (413)
before they are read whole. Errors never show hosts, users, secrets or server paths
(:func:`public_text`); infrastructure errors are logged on the api-server and answered with what
could not be reached. See docs/adr/0305-api-limits-and-docs.md.
"""

import json
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import replace
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from airflow.plugins_manager import AirflowPlugin
from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from sensei_airflow.conf import InvalidRequest, RollbackRequest
from sensei_airflow.manifest import Manifest
from sensei_airflow.names import split_list
from sensei_airflow.plan import RefusedError
from sensei_airflow.status import StatusDocument

ROLLBACK_DAG_ID = "sensei_rollback"
URL_PREFIX = "/sensei"
#: how many recent ``sensei_rollback`` runs the status endpoint looks through for queued ones.
RECENT_RUNS = 50
#: the largest request body accepted (a rollback request is well under 1 KiB; its reason at most 2000 characters).
MAX_BODY_BYTES = 64 * 1024

log = logging.getLogger(__name__)

#: an absolute path on the server (after a space, a quote, a parenthesis, ``=`` or at the start), or a file URL.
_SERVER_PATH = re.compile(r"(?:(?<=[\s'\"(=])|^)/(?:[^\s'\"()]+)|\bfile://[^\s'\"()]*")


def public_text(text: str) -> str:
    """Text fit for an API answer: redacted (secrets, URL userinfo) and without server paths."""
    from sensei_airflow.redaction import redact

    return _SERVER_PATH.sub("<server path>", redact(text))


def _unavailable(what: str, exc: Exception) -> HTTPException:
    """503 naming what could not be reached; the exception (which may name hosts and users) goes to the log."""
    from sensei_airflow.redaction import redact_error

    log.error("%s: %s", what, redact_error(exc))
    return HTTPException(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        f"{what} ({type(exc).__name__}); the api-server log has the details",
    )


class BodyLimit:
    """ASGI middleware: refuse a request body over ``limit`` bytes with 413.

    A declared ``Content-Length`` over the limit is refused at once; otherwise the body is read
    (at most ``limit`` bytes are ever held) and handed on only when it stayed within the limit.
    """

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.limit = limit

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        held: list[MutableMapping[str, Any]] = []
        size = 0
        while True:
            message = await receive()
            held.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> MutableMapping[str, Any]:
            return held.pop(0) if held else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable[[MutableMapping[str, Any]], Awaitable[None]]) -> None:
        body = json.dumps(
            {
                "detail": f"request body larger than {self.limit} bytes: a rollback request is a small JSON object"
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status.HTTP_413_CONTENT_TOO_LARGE,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _requires(method: str) -> Callable[..., None]:
    """Airflow's own check: the caller may ``method`` the runs of ``sensei_rollback``."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return requires_access_dag(method=method, access_entity=DagAccessEntity.RUN, param_dag_id=ROLLBACK_DAG_ID)  # type: ignore[arg-type]


def _user_dependency() -> Any:
    from airflow.api_fastapi.core_api.security import GetUserDep

    return GetUserDep


def _user_name(user: Any) -> str:
    """The name Airflow records as the triggering user."""
    return str(user.get_name())


# -- domain helpers (no FastAPI) ------------------------------------------------------------------
def _manifest(migration_id: str) -> Manifest:
    from sensei_airflow.manifest import load_manifests

    try:
        return load_manifests().get(migration_id)
    except LookupError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, public_text(str(exc))) from None


def _request(migration_id: str, body: Mapping[str, Any]) -> RollbackRequest:
    """The body plus the path's migration id, validated as the DAG's run conf is."""
    if not isinstance(body, Mapping):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the request body must be a JSON object")
    given = body.get("migration_id")
    if given is not None and given != migration_id:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"migration_id: the body names {given!r} but the path names {migration_id!r}",
        )
    try:
        return RollbackRequest.parse({**body, "migration_id": migration_id})
    except InvalidRequest as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, public_text(str(exc))) from None


def precheck(manifest: Manifest, request: RollbackRequest, now: datetime) -> None:
    """The checks that need no database: scope, window, strategy available in this installation.

    Assess repeats them (and the ones that need the databases) in the run itself.

    :raises RefusedError: with the reason, in one line.
    """
    from sensei_airflow.plan import resolve_scope, strategy_candidates
    from sensei_airflow.runbook import check_window
    from sensei_airflow.strategies import STRATEGY_CLASSES

    resolve_scope(manifest, request)
    if manifest.started_at is not None:  # a start mark, if any, is read (and the window checked) by assess
        check_window(manifest, now, manifest.started_at)
    candidates = strategy_candidates(manifest, request)
    if not any(c in STRATEGY_CLASSES for c in candidates):
        available = ", ".join(sorted(STRATEGY_CLASSES))
        wanted = " or ".join(str(c) for c in candidates)
        raise RefusedError(
            f"strategy {wanted} is not available in this installation (available: {available})"
        )


def paused_detail() -> str:
    """The 409 answer while ``sensei_rollback`` is paused: what is wrong and the two ways out, in one line."""
    return (
        f"{ROLLBACK_DAG_ID} is paused and Airflow runs nothing of a paused DAG, so no rollback was queued: "
        f"unpause it (the toggle in the UI, or `airflow dags unpause {ROLLBACK_DAG_ID}`) or repeat this "
        "request with ?unpause=true to unpause it here (recorded in the audit trail)"
    )


def rollback_dag_paused() -> bool | None:
    """Whether ``sensei_rollback`` is paused in the metadata database (``None``: not there yet)."""
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return session.scalar(select(DagModel.is_paused).where(DagModel.dag_id == ROLLBACK_DAG_ID))


def may_unpause(user: Any) -> bool:
    """Whether the auth manager lets ``user`` edit the ``sensei_rollback`` DAG (what unpausing it needs)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    return bool(
        get_auth_manager().is_authorized_dag(method="PUT", details=DagDetails(id=ROLLBACK_DAG_ID), user=user)
    )


class UnpauseNotRecorded(RuntimeError):
    """The audit trail could not take the unpause event, so the DAG was left paused.

    :param error: what the state store raised.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def unpause_audited(manifest: Manifest, request: RollbackRequest, actor: str) -> int:
    """Unpause ``sensei_rollback`` for a rollback request, recorded first; returns the audit event's number.

    The event goes to the migration's audit trail before the flag changes: when the state store
    cannot take it, nothing is unpaused. Airflow's own audit log gets an entry as well.

    :param manifest: the migration the rollback is for.
    :param request: the validated rollback request (its reason is recorded).
    :param actor: the user Airflow authenticated.
    :raises UnpauseNotRecorded: the audit trail could not take the event (nothing was unpaused).
    """
    from airflow.models.dag import DagModel
    from airflow.models.log import Log
    from airflow.utils.session import create_session
    from sqlalchemy import update

    from sensei_airflow.audit import AuditEvent, AuditTrail
    from sensei_airflow.state import StateStore

    try:
        seq, _ = AuditTrail(StateStore(manifest.state.conn_id)).append(
            AuditEvent(
                step="api",
                action="dag_unpaused",
                migration_id=manifest.id,
                actor=actor,
                reason=request.reason,
                detail={"dag_id": ROLLBACK_DAG_ID, "why": "rollback requested with unpause=true"},
            )
        )
    except Exception as exc:
        raise UnpauseNotRecorded(exc) from exc
    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id == ROLLBACK_DAG_ID).values(is_paused=False))
        session.add(
            Log(
                event="sensei_unpause_dag",
                dag_id=ROLLBACK_DAG_ID,
                owner=actor,
                extra=json.dumps({"is_paused": False, "migration_id": manifest.id, "audit_seq": seq}),
            )
        )
    return seq


def tables_parameter(values: list[str]) -> list[str]:
    """The ``tables`` query parameter as a list of written table names.

    Repeated (``tables=a&tables=b``): each value is one name, as it is (a name may hold a comma).
    Given once: a comma-separated list, split outside quoted parts (``tables=orders,"Sales, EU".items``).
    """
    if len(values) > 1:
        return [v.strip() for v in values if v.strip()]
    return split_list(values[0])


def plan_preview(manifest: Manifest, request: RollbackRequest, actor: str | None) -> dict[str, Any]:
    """Assess the request as the run's first task would, as a dry run: reads only, starts nothing."""
    from uuid import uuid4

    from sensei_airflow.runbook import RunContext, assess
    from sensei_airflow.state import utcnow

    dry = request.model_copy(update={"dry_run": True})
    run = RunContext(rollback_id=f"plan_{uuid4().hex[:12]}", actor=actor, now=utcnow())
    return assess(manifest, dry, run).model_dump(mode="json")


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return str(value)


def document_from_record(record: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The status document of a run record; built from the plan while the run is unfinished."""
    return StatusDocument.of_record(record, now).as_json()


def queued_document(migration_id: str, dag_run: Any, now: datetime) -> dict[str, Any]:
    """A run Airflow holds whose first task has not written its record yet."""
    return StatusDocument.queued(
        migration_id=migration_id,
        rollback_id=dag_run.run_id,
        airflow_state=str(dag_run.state),
        conf=dag_run.conf or {},
        started=dag_run.start_date or dag_run.queued_at,
        now=now,
    ).as_json()


def _recent_runs(migration_id: str) -> list[Any]:
    """The newest ``sensei_rollback`` runs for this migration, newest first (metadata database)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        runs = session.scalars(
            select(DagRun)
            .where(DagRun.dag_id == ROLLBACK_DAG_ID)
            .order_by(DagRun.run_after.desc(), DagRun.id.desc())
            .limit(RECENT_RUNS)
        ).all()
        session.expunge_all()
    return [r for r in runs if (r.conf or {}).get("migration_id") == migration_id]


def newest_backups(manifest: Manifest, limit: int = 3) -> list[dict[str, Any]]:
    """The migration's newest usable backups (newest first), from the backup catalog in its state store."""
    try:
        from sensei_airflow.backups.catalog import BackupCatalog
    except ImportError:  # an installation without the backups package lists none
        return []
    from sensei_airflow.state import StateStore

    entries = BackupCatalog(StateStore(manifest.state.conn_id)).list(manifest.id)
    return [e.summary() for e in entries if e.usable()][:limit]


def migration_summary(manifest: Manifest, now: datetime) -> dict[str, Any]:
    closes = manifest.window_closes_at()
    rollback = manifest.rollback
    return {
        "id": manifest.id,
        "description": manifest.description,
        "source": manifest.source.conn_id,
        "target": manifest.target.conn_id,
        "started_at": _iso(manifest.started_at),
        "rollback_window": {
            "hours": rollback.rollback_window_hours,
            "closes_at": _iso(closes),
            "open": closes is None or now <= closes,
        },
        "preferred_strategy": str(rollback.preferred_strategy),
        "fallback_strategy": str(rollback.fallback_strategy) if rollback.fallback_strategy else None,
        "phases": [
            {"phase": p.phase, "tables": [t.target for t in p.tables]}
            for p in sorted(manifest.phases, key=lambda p: p.phase)
        ],
        **_backups_block(manifest),
    }


def _backups_block(manifest: Manifest) -> dict[str, Any]:
    """``backups``, or ``backups_error`` when the state store cannot be read (the listing still answers).

    The error says which connection could not be read, never the exception's text (it names hosts
    and users); that goes to the api-server log.
    """
    try:
        return {"backups": newest_backups(manifest)}
    except Exception as exc:
        from sensei_airflow.redaction import redact_error

        log.error("backups of %s: %s", manifest.id, redact_error(exc))
        return {
            "backups": [],
            "backups_error": f"the backup catalog in state store {manifest.state.conn_id} cannot be read "
            f"({type(exc).__name__}); the api-server log has the details",
        }


# -- the FastAPI application ----------------------------------------------------------------------
def create_app() -> FastAPI:
    """The FastAPI app mounted by Airflow's api-server at :data:`URL_PREFIX`."""
    app = FastAPI(
        title="Sensei rollback API",
        description="Roll back data migrations through the sensei_rollback runbook.",
        version="1",
        # the interactive pages are off; the schema itself is served to readers only (below)
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)
    user_dep = _user_dependency()

    @app.get("/openapi.json", dependencies=[Depends(_requires("GET"))], include_in_schema=False)
    def openapi() -> dict[str, Any]:
        """The API's OpenAPI document, for those who may read rollbacks."""
        return app.openapi()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return JSONResponse({"detail": problems}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)

    @app.get("/v1/migrations", dependencies=[Depends(_requires("GET"))])
    def list_migrations() -> dict[str, Any]:
        """Every migration manifest with its rollback window and newest backups."""
        from sensei_airflow.manifest import load_manifests
        from sensei_airflow.state import utcnow

        manifests = load_manifests()
        now = utcnow()
        return {
            "migrations": [migration_summary(m, now) for m in sorted(manifests, key=lambda m: m.id)],
            # the file's name, not where it lives on the server
            "errors": [public_text(str(replace(e, path=Path(e.path).name))) for e in manifests.errors],
        }

    @app.post(
        "/v1/migrations/{migration_id}/rollback",
        status_code=status.HTTP_202_ACCEPTED,
        dependencies=[Depends(_requires("POST"))],
    )
    def start_rollback(
        migration_id: str,
        user: user_dep,  # type: ignore[valid-type]  # evaluated: no postponed annotations here
        body: Annotated[dict[str, Any] | None, Body()] = None,
        unpause: Annotated[
            bool,
            Query(
                description=f"unpause {ROLLBACK_DAG_ID} when it is paused (needs the right to edit the DAG; "
                "recorded in the migration's audit trail); without it a paused DAG answers 409"
            ),
        ] = False,
    ) -> dict[str, Any]:
        """Start a rollback; answers its id (the Airflow run id of ``sensei_rollback``).

        A paused ``sensei_rollback`` would hold the run queued forever: the request is refused with
        409 naming the fix, or, with ``unpause=true``, the DAG is unpaused first and that is audited.
        """
        from airflow.api.common.trigger_dag import trigger_dag
        from airflow.exceptions import DagNotFound
        from airflow.utils.types import DagRunTriggeredByType

        from sensei_airflow.state import utcnow

        request = _request(migration_id, body or {})
        manifest = _manifest(migration_id)
        try:
            precheck(manifest, request, utcnow())
        except RefusedError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, public_text(str(exc))) from None
        unpaused_by_audit_event = None
        if rollback_dag_paused():
            if not unpause:
                raise HTTPException(status.HTTP_409_CONFLICT, paused_detail())
            if not may_unpause(user):
                raise HTTPException(
                    status.HTTP_403_FORBIDDEN,
                    f"{ROLLBACK_DAG_ID} is paused and unpausing it needs the right to edit that DAG",
                )
            try:
                unpaused_by_audit_event = unpause_audited(manifest, request, _user_name(user))
            except UnpauseNotRecorded as exc:
                raise _unavailable(
                    f"{ROLLBACK_DAG_ID} stays paused: the unpause could not be recorded in state store "
                    f"{manifest.state.conn_id}",
                    exc.error,
                ) from None
        try:
            dag_run = trigger_dag(
                ROLLBACK_DAG_ID,
                triggered_by=DagRunTriggeredByType.REST_API,
                triggering_user_name=_user_name(user),
                conf=request.conf(),
                note=request.reason,
            )
        except DagNotFound as exc:
            detail = f"{public_text(str(exc))}: is the dag processor running?"
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail) from None
        except ValueError as exc:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, public_text(str(exc))) from None
        if dag_run is None:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, "the rollback run could not be created")
        status_url = f"{URL_PREFIX}/v1/migrations/{migration_id}/rollback/status"
        return {
            "migration_id": migration_id,
            "rollback_id": dag_run.run_id,
            "rollback_status": "running",
            "dag_id": ROLLBACK_DAG_ID,
            "request": request.conf(),
            "status_url": f"{status_url}?{urlencode({'rollback_id': dag_run.run_id})}",
            **({"unpaused": {"audit_seq": unpaused_by_audit_event}} if unpaused_by_audit_event else {}),
        }

    @app.post("/v1/migrations/{migration_id}/start", dependencies=[Depends(_requires("POST"))])
    def start_mark(
        migration_id: str,
        user: user_dep,  # type: ignore[valid-type]  # evaluated: no postponed annotations here
        restart: Annotated[bool, Query(description="replace an existing mark (audited)")] = False,
        reason: Annotated[
            str | None, Query(max_length=2000, description="why; goes into the audit trail")
        ] = None,
    ) -> dict[str, Any]:
        """Take the migration's start mark (idempotent: a second call answers the first mark, ``taken`` false)."""
        from sensei_airflow.engines.base import MarkRefused
        from sensei_airflow.mark import take_mark

        manifest = _manifest(migration_id)
        try:
            mark, taken = take_mark(manifest, restart=restart, actor=_user_name(user), reason=reason)
        except MarkRefused as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, public_text(str(exc))) from None
        return {"migration_id": migration_id, "taken": taken, **mark.summary()}

    @app.get("/v1/migrations/{migration_id}/rollback/status", dependencies=[Depends(_requires("GET"))])
    def rollback_status(
        migration_id: str,
        rollback_id: Annotated[str | None, Query(description="a given rollback; default: the newest")] = None,
    ) -> dict[str, Any]:
        """The status document of the newest (or the given) rollback of the migration."""
        from sensei_airflow.state import StateStore, utcnow

        manifest = _manifest(migration_id)
        try:
            return _status(manifest, migration_id, rollback_id, StateStore(manifest.state.conn_id), utcnow())
        except HTTPException:
            raise
        except Exception as exc:
            raise _unavailable(f"the state store {manifest.state.conn_id} cannot be read", exc) from None

    def _status(
        manifest: Manifest, migration_id: str, rollback_id: str | None, store: Any, now: datetime
    ) -> dict[str, Any]:
        if rollback_id is not None:
            record = store.get_run(rollback_id)
            if record is not None and record["migration_id"] == migration_id:
                return document_from_record(record, now)
            runs = [r for r in _recent_runs(migration_id) if r.run_id == rollback_id]
            if runs:
                return queued_document(migration_id, runs[0], now)
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rollback {rollback_id!r} of {migration_id}")
        record = store.latest_run(migration_id)
        for dag_run in _recent_runs(migration_id):
            if record is not None and dag_run.run_id == record["rollback_id"]:
                break
            if store.get_run(dag_run.run_id) is None:
                return queued_document(migration_id, dag_run, now)
            break
        if record is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no rollback of {migration_id} yet")
        return document_from_record(record, now)

    # A plan is a rollback's assess: it reads the target (row counts of every table) and re-hashes
    # the chosen backup's files. Asking for one needs the right to start the rollback (ADR 0305).
    @app.get("/v1/migrations/{migration_id}/rollback/plan", dependencies=[Depends(_requires("POST"))])
    def rollback_plan(
        migration_id: str,
        user: user_dep,  # type: ignore[valid-type]
        strategy: str | None = None,
        scope: str | None = None,
        phase: int | None = None,
        tables: Annotated[
            list[str] | None,
            Query(
                description="one table: repeat the parameter for each (tables=a&tables=b), or give one "
                'comma-separated list (tables=a,b); a comma inside a quoted part ("Sales, EU".orders) does '
                "not split, and a name holding a comma needs repeated parameters or quotes"
            ),
        ] = None,
        restore_to: str | None = None,
        backup_id: str | None = None,
        verify_after: bool | None = None,
        reason: str | None = None,
    ) -> dict[str, Any]:
        """The dry-run plan of a rollback (tables in order, rows each would lose, the SQL); starts nothing."""
        if tables:
            tables = tables_parameter(tables)
        given = {
            "strategy": strategy,
            "scope": scope,
            "phase": phase,
            "tables": tables,
            "restore_to": restore_to,
            "backup_id": backup_id,
            "verify_after": verify_after,
            "reason": reason,
        }
        request = _request(migration_id, {k: v for k, v in given.items() if v is not None})
        manifest = _manifest(migration_id)
        try:
            return plan_preview(manifest, request, _user_name(user))
        except RefusedError as exc:
            raise HTTPException(status.HTTP_409_CONFLICT, public_text(str(exc))) from None
        except Exception as exc:
            raise _unavailable(
                f"the plan of {migration_id} could not be made: a database could not be read", exc
            ) from None

    return app


@cache
def _app() -> FastAPI:
    return create_app()


class SenseiApiPlugin(AirflowPlugin):
    """Registers the sensei REST API on Airflow's api-server.

    The app is built when the api-server asks for it, so other processes that load plugins
    (scheduler, workers, dag processor) do not pay for the api-server's imports.
    """

    name = "sensei"

    @property  # type: ignore[override]
    def fastapi_apps(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [{"app": _app(), "url_prefix": URL_PREFIX, "name": "Sensei rollback API"}]
