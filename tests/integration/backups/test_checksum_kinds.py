"""Table checksums of two kinds (ADR 0101): the record hash where every column type has one, the
hash of each row's text otherwise, and each recorded checksum compared with one of its own kind."""

from __future__ import annotations

from typing import Any

from tests.fixtures import Databases

TEXT_SUM = "SELECT coalesce(sum(hashtextextended(t::text, 0)), 0)::text FROM {} t"
RECORD_SUM = "SELECT coalesce(sum(hash_record_extended(t, 0)), 0)::text FROM {} t"


def _tables(databases: Databases) -> tuple[Any, str, str]:
    from sensei_airflow.engines.postgres import PostgresEngine

    with databases.connect("target") as conn:
        conn.execute('CREATE SCHEMA "Sales Data"')
        conn.execute(
            'CREATE TABLE "Sales Data"."Order Items" (id int PRIMARY KEY, "Display Name" text, "select" numeric(12, 2), '
            "tags text[], at timestamptz)"
        )
        conn.execute(
            """INSERT INTO "Sales Data"."Order Items" SELECT g, 'Zoë O''Brien ' || g, g / 3.0, ARRAY['a', 'ü'],
            '2026-01-01'::timestamptz + g * interval '1 hour' FROM generate_series(1, 500) g"""
        )
        # json and point have no hash function: the row's text is hashed instead
        conn.execute(
            'CREATE TABLE "Sales Data"."Länder | Countries" (code text PRIMARY KEY, doc json, pos point)'
        )
        conn.execute(
            """INSERT INTO "Sales Data"."Länder | Countries" VALUES ('FR', '{"name": "République"}', '(1,2)'),
            ('DE', '{"name": "Deutschland"}', NULL)"""
        )
    engine = PostgresEngine("shop_target")
    return (
        engine,
        engine.qualify('"Sales Data"."Order Items"'),
        engine.qualify('"Sales Data"."Länder | Countries"'),
    )


def test_each_table_gets_the_record_hash_where_its_types_allow_and_the_text_hash_otherwise(
    databases: Databases,
) -> None:
    engine, items, countries = _tables(databases)

    sums = engine.table_checksums([items, countries])

    quoted_items, quoted_countries = engine.quote_table(items), engine.quote_table(countries)
    assert sums[items].rows == 500
    assert sums[items].checksum == "record:" + databases.scalar("target", RECORD_SUM.format(quoted_items))
    assert sums[countries].rows == 2
    assert sums[countries].checksum == databases.scalar("target", TEXT_SUM.format(quoted_countries))


def test_a_checksum_recorded_with_the_text_hash_is_compared_with_the_text_hash(databases: Databases) -> None:
    """Backups and start marks recorded before the record hash keep comparing equal while the rows do."""
    engine, items, countries = _tables(databases)
    text_sum = databases.scalar("target", TEXT_SUM.format(engine.quote_table(items)))

    again = engine.table_checksums([items, countries], like={items: text_sum, countries: "record:1"})

    assert again[items].checksum == text_sum
    # recorded with the record hash, which its types no longer allow: a value that compares unequal
    assert again[countries].checksum == "record:none (a column type has no hash)"
    with databases.connect("target") as conn:
        conn.execute("""UPDATE "Sales Data"."Order Items" SET "select" = "select" + 1 WHERE id = 7""")
    assert engine.table_checksums([items], like={items: text_sum})[items].checksum != text_sum
