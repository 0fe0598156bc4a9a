"""The rollback request: the run conf of ``sensei_rollback`` and the body of the REST API.

One pydantic model validates a request wherever it comes from, and also produces the DAG's
``Param``s, so the UI form, Airflow's REST API and ``dag.test`` enforce the same per-field
schema. Rules that join several fields (a phase with scope ``phase``) live in the model and
are applied by the first runbook task, before anything is changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from sensei_airflow.manifest import MIGRATION_ID_PATTERN
from sensei_airflow.names import parse_name

#: the most tables one request may list (a run conf, an API body or query).
MAX_TABLES = 1000

StrategyChoice = Literal[
    "auto", "truncate", "reverse_migration", "point_in_time", "backup_restore", "undo_log"
]
ScopeChoice = Literal["all", "phase", "tables"]

STRATEGY_HELP = {
    "auto": "The manifest's preferred strategy, then its fallback if the preferred one cannot apply",
    "truncate": "Empty the migrated target tables, children first (fast; target data only)",
    "reverse_migration": "Copy the data back from target to source through the inverse transforms",
    "point_in_time": "Restore the target tables as they were at restore_to (database-native recovery)",
    "backup_restore": "Restore the target tables from a pre-migration backup",
    "undo_log": "Undo every change made to the tables since the migration's start mark (costs the size of the change)",
}
SCOPE_HELP = {
    "all": "Every table of the migration",
    "phase": "The tables of one phase (set phase)",
    "tables": "The tables listed in tables",
}


#: Fields without a section land in the trigger form's first section, the one Airflow's UI shows
#: expanded: what a DBA must decide (dry run first). Options for one strategy sit in a folded section.
MAIN_SECTION: str | None = None
#: The order of the fields in the trigger form.
FORM_ORDER = (
    "dry_run",
    "migration_id",
    "strategy",
    "scope",
    "phase",
    "tables",
    "reason",
    "restore_to",
    "backup_id",
    "verify_after",
)


def _table_name(value: Any) -> Any:
    """A table name as written (qualified or not, quoted or not), surrounding whitespace removed.

    :raises ValueError: naming what is wrong with it (sensei_airflow/names.py's grammar).
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text:
        parse_name(text)
    return text


#: one entry of ``tables``: ``orders``, ``sales.orders``, ``"Sales Data"."Order.Items"``.
TableName = Annotated[str, BeforeValidator(_table_name), Field(min_length=1, max_length=600)]


def _form(section: str | None, title: str, description: str, **extra: Any) -> dict[str, Any]:
    return {**({"section": section} if section else {}), "title": title, "description": description, **extra}


class RollbackRequest(BaseModel):
    """What a user asks for: which migration to roll back, how, and how much of it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    dry_run: Annotated[
        bool,
        Field(
            json_schema_extra=_form(
                MAIN_SECTION,
                "Dry run",
                "Plan and report only: show the tables, the rows each would lose and the exact SQL. "
                "Nothing is changed.",
            )
        ),
    ] = False
    reason: Annotated[
        str | None,
        Field(
            max_length=2000,
            json_schema_extra=_form(
                MAIN_SECTION,
                "Reason",
                "Why this rollback is needed; goes into the audit trail and the report.",
            ),
        ),
    ] = None
    migration_id: Annotated[
        str,
        Field(
            pattern=MIGRATION_ID_PATTERN,
            json_schema_extra=_form(MAIN_SECTION, "Migration", "Which migration manifest."),
        ),
    ]
    strategy: Annotated[
        StrategyChoice,
        Field(
            json_schema_extra=_form(
                MAIN_SECTION,
                "Strategy",
                "How to undo it. auto: the manifest's preferred strategy, then its fallback.",
                values_display=STRATEGY_HELP,
            )
        ),
    ] = "auto"
    scope: Annotated[
        ScopeChoice,
        Field(
            json_schema_extra=_form(
                MAIN_SECTION,
                "Scope",
                "Everything, one phase, or chosen tables (partial rollback).",
                values_display=SCOPE_HELP,
            )
        ),
    ] = "all"
    phase: Annotated[
        int | None,
        Field(
            ge=1,
            json_schema_extra=_form(MAIN_SECTION, "Phase", "With scope phase: the phase number."),
        ),
    ] = None
    tables: Annotated[
        list[TableName] | None,
        Field(
            max_length=MAX_TABLES,
            json_schema_extra=_form(
                MAIN_SECTION,
                "Tables",
                "With scope tables: target table names, one per line; unqualified (orders) when unambiguous. "
                'A name is written as the database holds it (Order Items); a part holding a dot or a " '
                'is quoted ("Sales Data"."Order.Items").',
            ),
        ),
    ] = None
    restore_to: Annotated[
        AwareDatetime | None,
        Field(
            json_schema_extra=_form(
                "Strategy options",
                "Restore to",
                "point_in_time: the moment to restore to, with its offset. Default: when the migration began.",
                format="date-time",
            )
        ),
    ] = None
    backup_id: Annotated[
        str | None,
        Field(
            pattern=r"^[A-Za-z0-9_\-]{1,100}$",
            json_schema_extra=_form(
                "Strategy options",
                "Backup id",
                "backup_restore: which backup. Default: the newest usable backup of this target database "
                "taken at or before the migration's start.",
            ),
        ),
    ] = None
    verify_after: Annotated[
        bool | None,
        Field(
            json_schema_extra=_form(
                "Strategy options",
                "Verify after",
                "Verify counts, checksums and samples after the rollback. Default: the manifest's "
                "verify_rollback.",
            )
        ),
    ] = None

    @model_validator(mode="after")
    def _scope_fields(self) -> RollbackRequest:
        tables = self.tables or []
        if self.scope == "phase" and self.phase is None:
            raise ValueError("scope 'phase' needs a phase number")
        if self.scope != "phase" and self.phase is not None:
            raise ValueError(f"phase is only used with scope 'phase', not with scope {self.scope!r}")
        if self.scope == "tables" and not tables:
            raise ValueError("scope 'tables' needs a non-empty list of tables")
        if self.scope != "tables" and tables:
            raise ValueError(f"tables is only used with scope 'tables', not with scope {self.scope!r}")
        if self.restore_to is not None and self.strategy not in ("point_in_time", "auto"):
            raise ValueError(f"restore_to is only used by the point_in_time strategy, not {self.strategy}")
        if self.backup_id is not None and self.strategy not in ("backup_restore", "auto"):
            raise ValueError(f"backup_id is only used by the backup_restore strategy, not {self.strategy}")
        return self

    @classmethod
    def parse(cls, conf: Mapping[str, Any]) -> RollbackRequest:
        """Validate a run conf or API body.

        :raises InvalidRequest: with one line per problem, naming the key.
        """
        if not isinstance(conf, Mapping):
            raise InvalidRequest("the request must be a JSON object")
        try:
            return cls.model_validate({k: v for k, v in conf.items() if v is not None})
        except ValidationError as exc:
            raise InvalidRequest(describe_validation_error(exc)) from None

    def conf(self) -> dict[str, Any]:
        """The request as a JSON-ready run conf, without unset keys."""
        return self.model_dump(mode="json", exclude_none=True)


class InvalidRequest(ValueError):
    """A rollback request that cannot be accepted, with the reason."""


def describe_validation_error(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors():
        key = ".".join(str(p) for p in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            allowed = ", ".join(RollbackRequest.model_fields)
            message = f"unknown key (allowed: {allowed})"
        elif error["type"] == "missing":
            message = "is required"
        problems.append(f"{key}: {message}" if key else message)
    return "; ".join(problems)


def _field_schema(name: str, property_schema: dict[str, Any]) -> dict[str, Any]:
    """Turn pydantic's property schema into the flat JSON schema Airflow's form renders."""
    schema = dict(property_schema)
    variants = schema.pop("anyOf", None)
    if variants:
        types: list[str] = []
        for variant in variants:
            types.append(variant.get("type", "string"))
            schema.update({k: v for k, v in variant.items() if k != "type"})
        schema["type"] = types
        if "enum" in schema:
            schema["enum"] = [*schema["enum"], None]
    if "const" in schema:
        schema["enum"] = [schema.pop("const")]
    schema.pop("default", None)
    return schema


def rollback_params(migration_ids: Iterable[str]) -> dict[str, Any]:
    """The ``Param``s of ``sensei_rollback``, generated from :class:`RollbackRequest`.

    ``migration_id`` becomes a dropdown (``examples``) of the known manifests.
    """
    from airflow.sdk import Param

    json_schema = RollbackRequest.model_json_schema()
    properties = json_schema["properties"]
    ids = sorted(migration_ids)
    params: dict[str, Any] = {}
    fields = RollbackRequest.model_fields
    for name in [*(f for f in FORM_ORDER if f in fields), *(f for f in fields if f not in FORM_ORDER)]:
        field = fields[name]
        schema = _field_schema(name, properties[name])
        if "values_display" in schema:
            schema["values_display"] = {k: f"{k}: {v}" for k, v in schema["values_display"].items()}
        if name == "migration_id":
            # A dropdown of the manifests known when the DAG was parsed, still open to an id
            # added since: assess then says clearly whether the manifest exists.
            schema["type"] = ["string", "null"]
            schema.pop("pattern", None)
            if ids:
                schema["examples"] = ids
        if name == "tables":
            schema["items"] = {"type": "string"}
        default = None if field.is_required() else field.default
        params[name] = Param(default, **schema)
    return params
