"""redact(): what every stored error goes through; mask_connection(): a connection's secrets for Airflow's masker."""

from __future__ import annotations

import json

import pytest

from sensei_airflow.redaction import connection_secrets, mask_connection, redact, redact_error


def connection(**fields):
    from airflow.sdk import Connection

    return Connection(conn_id="ops_webhook", **fields)


def test_a_webhook_connection_s_secrets_are_masked_wherever_they_appear():
    conn = connection(
        conn_type="http",
        host="hooks.example",
        schema="https",
        login="hooks",
        password="Pa55-w0rd-unit",
        extra=json.dumps(
            {"endpoint": "/T000/B000/SECRETPATH-unit-77?token=tok-unit-123", "api_key": "key-unit-456"}
        ),
    )
    assert {"Pa55-w0rd-unit", "SECRETPATH-unit-77", "tok-unit-123", "key-unit-456"} <= set(
        connection_secrets(conn)
    )
    mask_connection(conn)

    text = "POST hooks.example/T000/B000/SECRETPATH-unit-77 failed; pw Pa55-w0rd-unit; key key-unit-456"
    redacted = redact(text)

    assert redacted == "POST hooks.example/*** failed; pw ***; key ***"


def test_ordinary_words_of_a_webhook_path_are_not_masked_everywhere():
    conn = connection(
        conn_type="http", host="hooks.example", extra=json.dumps({"endpoint": "/services/sensei"})
    )
    secrets = connection_secrets(conn)
    assert "services/sensei" in secrets
    assert "sensei" not in secrets and "services" not in secrets


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "could not connect to postgresql://sensei:s3cret@db.internal:5432/state",
            "could not connect to postgresql://***@db.internal:5432/state",
        ),
        (
            "Client error '404 Not Found' for url 'https://hooks.example/services/x?token=abc&sig=def'",
            "Client error '404 Not Found' for url 'https://hooks.example/services/x?***'",
        ),
        (
            "dsn: host=db user=sensei password=s3cret dbname=x",
            "dsn: host=db user=sensei password=*** dbname=x",
        ),
        (
            '{"Authorization": "Bearer abc.def.ghi", "token": "xyz"}',
            '{"Authorization": "***", "token": "***"}',
        ),
        ("nothing secret here: 3 rows in sales.orders", "nothing secret here: 3 rows in sales.orders"),
    ],
)
def test_secrets_recognised_by_their_shape(text, expected):
    assert redact(text) == expected


def test_redact_error_names_the_exception():
    error = ConnectionError("login to https://user:pw123@api.example/v1 refused")
    assert redact_error(error) == "ConnectionError: login to https://***@api.example/v1 refused"
