"""test_decoding lines as PostgreSQL 15 writes them, and their net effect per key."""

from __future__ import annotations

import pytest

from sensei_airflow.engines.base import UndoLogRefused
from sensei_airflow.engines.postgres.undo import Change, Truncate, net_effect, parse_change

UPDATE = (
    'table "Sales Data"."Order.Items": UPDATE: old-key: id[integer]:1 "order"[text]:\'it\'\'s\' '
    "\"Ünit Price\"[numeric]:1.5 tags[integer[]]:'{1,2}' b[boolean]:true f[double precision]:0.1 "
    "ts[timestamp with time zone]:'2026-12-03 00:54:16.264705+00' new-tuple: id[integer]:1 "
    "\"order\"[text]:'new' \"Ünit Price\"[numeric]:1.5 tags[integer[]]:'{1,2}' b[boolean]:true "
    "f[double precision]:0.1 ts[timestamp with time zone]:'2026-12-03 00:54:16.264705+00' n[text]:null"
)
SCOPE = {("Sales Data", "Order.Items"): ('"Sales Data"."Order.Items"', ("id",))}


def test_an_update_line_gives_old_and_new_rows_with_quotes_arrays_and_nulls() -> None:
    change = parse_change(UPDATE)
    assert isinstance(change, Change)
    assert (change.schema, change.table, change.kind) == ("Sales Data", "Order.Items", "UPDATE")
    assert change.old is not None and change.new is not None
    assert change.old["order"] == "it's"
    assert change.old["Ünit Price"] == "1.5"
    assert change.old["tags"] == "{1,2}"
    assert "n" not in change.old  # a null is left out of the old row: read as NULL
    assert change.new["n"] is None and change.new["order"] == "new"


def test_a_truncate_line_names_every_table_and_begin_commit_are_not_rows() -> None:
    found = parse_change('table public.a, "Sales Data"."Order.Items": TRUNCATE: (no-flags)')
    assert isinstance(found, Truncate)
    assert found.tables == [("public", "a"), ("Sales Data", "Order.Items")]
    assert parse_change("BEGIN") is None and parse_change("COMMIT") is None


def _row(key: str, name: str) -> dict[str, str | None]:
    return {"id": key, "order": name}


def test_the_oldest_change_of_a_key_holds_its_row_at_the_mark() -> None:
    changes = [
        Change("Sales Data", "Order.Items", "UPDATE", old=_row("1", "at mark"), new=_row("1", "x")),
        Change("Sales Data", "Order.Items", "UPDATE", old=_row("1", "x"), new=_row("1", "y")),
        Change("Sales Data", "Order.Items", "INSERT", new=_row("2", "new")),
        Change("Sales Data", "Order.Items", "UPDATE", old=_row("2", "new"), new=_row("2", "newer")),
        Change("Sales Data", "Order.Items", "DELETE", old=_row("3", "was there")),
        Change("Sales Data", "Order.Items", "INSERT", new=_row("4", "gone again")),
        Change("Sales Data", "Order.Items", "DELETE", old=_row("4", "gone again")),
        Change("public", "elsewhere", "DELETE", old=_row("9", "not in scope")),
    ]
    effect = net_effect(changes, SCOPE)['"Sales Data"."Order.Items"']
    inserts, updates, deletes = effect.inverse()
    assert updates == {("1",): _row("1", "at mark")}
    assert inserts == {("3",): _row("3", "was there")}
    assert deletes == [("2",)]  # key 4 came and went: nothing to do
    assert effect.captured == {"insert": 2, "update": 3, "delete": 2, "truncate": 0}


def test_a_key_changed_by_an_update_is_a_delete_and_an_insert() -> None:
    changes = [Change("Sales Data", "Order.Items", "UPDATE", old=_row("1", "a"), new=_row("7", "a"))]
    inserts, updates, deletes = net_effect(changes, SCOPE)['"Sales Data"."Order.Items"'].inverse()
    assert inserts == {("1",): _row("1", "a")} and updates == {} and deletes == [("7",)]


def test_a_truncate_without_saved_rows_is_refused_and_one_outside_is_ignored() -> None:
    assert net_effect([Truncate([("public", "elsewhere")])], SCOPE)['"Sales Data"."Order.Items"'].before == {}
    with pytest.raises(UndoLogRefused, match="was truncated since the start mark without its rows saved"):
        net_effect([Truncate([("Sales Data", "Order.Items")])], SCOPE)


JOURNALS = {("sensei_undo_mig", "t1"): '"Sales Data"."Order.Items"'}
MESSAGE = "message: transactional: 1 prefix: sensei_undo, sz: 18 content:sensei_undo_mig t1"


def test_rows_saved_by_a_truncate_are_deletes_of_the_rows_it_emptied() -> None:
    """The trigger's message, then the journal's inserts, then the TRUNCATE: each saved row was the
    table's; a key inserted since the mark and then truncated was not there at the mark."""
    table = 'table "Sales Data"."Order.Items": '
    journal = "table sensei_undo_mig.t1: INSERT: "
    lines = [
        table
        + "UPDATE: old-key: id[integer]:1 \"order\"[text]:'at mark' new-tuple: id[integer]:1 \"order\"[text]:'x'",
        table + "INSERT: id[integer]:2 \"order\"[text]:'new'",
        MESSAGE,
        journal + "id[integer]:1 \"order\"[text]:'x'",
        journal + "id[integer]:2 \"order\"[text]:'new'",
        journal + "id[integer]:3 \"order\"[text]:'it''s at mark'",
        'table "Sales Data"."Order.Items", public.other: TRUNCATE: cascade',
        table + "INSERT: id[integer]:4 \"order\"[text]:'after the truncate'",
        # a message and rows of another undo log's journal, with the same short name
        "message: transactional: 1 prefix: sensei_undo, sz: 18 content:sensei_undo_other t1",
        "table sensei_undo_other.t1: INSERT: id[integer]:5 \"order\"[text]:'not ours'",
    ]
    effect = net_effect(lines, SCOPE, JOURNALS)['"Sales Data"."Order.Items"']
    inserts, updates, deletes = effect.inverse()
    assert inserts == {("1",): _row("1", "at mark"), ("3",): _row("3", "it's at mark")}
    assert updates == {}
    assert deletes == [("4",)]  # key 2 came and went with the truncate
    assert effect.captured == {"insert": 2, "update": 1, "delete": 0, "truncate": 3}


def test_each_truncate_needs_its_own_message() -> None:
    """Two TRUNCATEs and one message (the second by a sensei rollback, which saves nothing)."""
    truncate = 'table "Sales Data"."Order.Items": TRUNCATE: (no-flags)'
    with pytest.raises(UndoLogRefused, match="without its rows saved"):
        net_effect([MESSAGE, truncate, truncate], SCOPE, JOURNALS)
    # a message of a journal outside the scope saves nothing for the table
    with pytest.raises(UndoLogRefused, match="without its rows saved"):
        net_effect([MESSAGE, truncate], SCOPE, {("sensei_undo_mig", "t2"): "other"})


def test_lines_read_lazily_give_the_same_net_effect_as_parsed_changes() -> None:
    table = 'table "Sales Data"."Order.Items": '
    lines = [
        "BEGIN",
        table
        + "UPDATE: old-key: id[integer]:1 \"order\"[text]:'at mark' new-tuple: id[integer]:1 \"order\"[text]:'x'",
        table + "INSERT: id[integer]:2 \"order\"[text]:'new key: id[integer]:9'",
        table + "DELETE: id[integer]:3 \"order\"[text]:'was there'",
        table + "INSERT: id[integer]:3 \"order\"[text]:'back'",
        table + "DELETE: id[integer]:3 \"order\"[text]:'back'",
        "table public.elsewhere: DELETE: id[integer]:9",
        "COMMIT",
    ]
    effect = net_effect(lines, SCOPE)['"Sales Data"."Order.Items"']
    inserts, updates, deletes = effect.inverse()
    assert updates == {("1",): _row("1", "at mark")}
    assert inserts == {("3",): _row("3", "was there")}
    assert deletes == [("2",)]
    assert effect.captured == {"insert": 2, "update": 1, "delete": 2, "truncate": 0}
