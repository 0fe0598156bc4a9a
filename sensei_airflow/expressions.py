"""The manifest's ``forward``/``inverse`` SQL expressions, checked with sqlglot when a manifest loads.

An expression is SQL the rollback runs inside its own statements (the inverse inside the
target's ``SELECT``, the forward in the round-trip proof). It must therefore be exactly one
expression over the row: no statement separator, no second statement, no subquery, and no
function with an effect outside the row it computes (sequences, session settings, other
sessions, server files, large objects, remote databases, sleeping, queries run from text).

Ordinary functions are allowed by default, built-in or user-defined; the functions below are
refused by name (see docs/adr/0205-expressions-parsed-with-sqlglot.md for why a deny-list).
"""

from __future__ import annotations

#: functions refused by exact name (lower case).
DENIED_FUNCTIONS = frozenset(
    {
        "nextval",
        "setval",
        "set_config",
        "pg_notify",
        "pg_reload_conf",
        "pg_rotate_logfile",
        "pg_promote",
        "pg_switch_wal",
        "pg_import_system_collations",
        "txid_current",
        "pg_current_xact_id",
        "loread",
        "lowrite",
    }
)
#: functions refused by name prefix (lower case): whole families with effects.
DENIED_PREFIXES = (
    "dblink",  # another database, as another session
    "lo_",  # large objects: server files, object creation and removal
    "pg_sleep",
    "pg_advisory",
    "pg_try_advisory",
    "pg_terminate",
    "pg_cancel",
    "pg_read_",  # server files
    "pg_ls_",
    "pg_stat_file",
    "pg_file_",
    "pg_stat_reset",
    "pg_create_",  # restore points, replication slots
    "pg_drop_",
    "pg_copy_",
    "pg_replication_",
    "pg_logical_",
    "pg_backup_",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_wal_replay",
)
#: functions refused when their name holds this: ``query_to_xml``, ``table_to_xml``, ... run queries.
DENIED_INFIXES = ("_to_xml",)


def denied(function: str) -> bool:
    """Whether a function (by name, any case, schema-qualified or not) is refused."""
    name = function.rsplit(".", 1)[-1].strip('"').lower()
    return (
        name in DENIED_FUNCTIONS or name.startswith(DENIED_PREFIXES) or any(i in name for i in DENIED_INFIXES)
    )


def check_expression(text: str) -> str:
    """Accept exactly one SQL expression (PostgreSQL syntax) with no statement, subquery or denied function.

    :param text: the manifest's ``forward`` or ``inverse`` value.
    :returns: ``text`` unchanged.
    :raises ValueError: naming the problem, in one line.
    """
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError, TokenError
    from sqlglot.tokens import TokenType

    if not text.strip():
        raise ValueError("is empty: give one SQL expression")
    try:
        tokens = sqlglot.tokenize(text, read="postgres")
    except TokenError as exc:
        raise ValueError(f"is not valid SQL: {_first_line(exc)}") from None
    if any(t.token_type == TokenType.SEMICOLON for t in tokens):
        raise ValueError(
            f"{text!r} holds a statement separator (;): give exactly one SQL expression, nothing after it"
        )
    try:
        parsed = sqlglot.parse_one(text, read="postgres", into=exp.Condition)
    except ParseError as exc:
        raise ValueError(f"{text!r} is not one SQL expression: {_first_line(exc)}") from None
    if parsed.find(exp.Query) is not None:
        raise ValueError(f"{text!r} holds a subquery: an expression may only use the row's own columns")
    for function in parsed.find_all(exp.Func):
        name = function.name if isinstance(function, exp.Anonymous) else function.sql_name()
        if denied(name):
            raise ValueError(
                f"{text!r} calls {name}(), which acts outside the row (sequences, settings, sessions, "
                "server files or other databases): not allowed in a column expression"
            )
    return text


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
