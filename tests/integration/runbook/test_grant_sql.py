"""The grant and revoke statements PostgreSQL gets, quoted by the engine."""

from __future__ import annotations

from sensei_airflow.engines.base import Grant
from sensei_airflow.engines.postgres import PostgresEngine


def test_revoke_and_restore_statements_keep_the_grant_option():
    engine = PostgresEngine("unused")
    grants = [
        Grant("Analyst", "sales.orders", "SELECT", True),
        Grant("Analyst", "sales.orders", "INSERT", False),
        Grant("bi", "crm.customers", "SELECT", False),
    ]

    revoke = [s.sql for s in engine._grant_sql(grants, revoke=True)]
    restore = [s.sql for s in engine._grant_sql(grants, revoke=False)]

    assert revoke == [
        'REVOKE SELECT ON TABLE "crm"."customers" FROM "bi"',
        'REVOKE INSERT, SELECT ON TABLE "sales"."orders" FROM "Analyst"',
    ]
    assert restore == [
        'GRANT SELECT ON TABLE "crm"."customers" TO "bi"',
        'GRANT INSERT ON TABLE "sales"."orders" TO "Analyst"',
        'GRANT SELECT ON TABLE "sales"."orders" TO "Analyst" WITH GRANT OPTION',
    ]
