"""Each engine builds its provider's hook on first use, and names the extra to install when the
provider is missing (imports happen inside the function, never at module import)."""

from __future__ import annotations

import sys

import pytest

from sensei_airflow.engines.bigquery import BigQueryEngine
from sensei_airflow.engines.mssql import MsSqlEngine
from sensei_airflow.engines.oracle import OracleEngine
from sensei_airflow.engines.snowflake import SnowflakeEngine

CASES = [
    (SnowflakeEngine, "airflow.providers.snowflake.hooks.snowflake", "snowflake"),
    (BigQueryEngine, "airflow.providers.google.cloud.hooks.bigquery", "google"),
    (OracleEngine, "airflow.providers.oracle.hooks.oracle", "oracle"),
    (MsSqlEngine, "airflow.providers.microsoft.mssql.hooks.mssql", "mssql"),
]


@pytest.mark.parametrize(("engine", "module", "extra"), CASES)
def test_missing_provider_names_its_extra(engine, module, extra, monkeypatch):
    from airflow.sdk.exceptions import AirflowOptionalProviderFeatureException

    monkeypatch.setitem(sys.modules, module, None)  # as if the provider were not installed
    built = engine("some_conn")  # constructing the engine needs nothing
    with pytest.raises(
        AirflowOptionalProviderFeatureException, match=rf"pip install 'sensei-airflow\[{extra}\]'"
    ):
        _ = built.hook


@pytest.mark.parametrize(("engine", "module", "extra"), CASES)
def test_engine_modules_do_not_import_their_provider(engine, module, extra):
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(sys.modules[engine.__module__]))
    top_level = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    names = [getattr(node, "module", None) or node.names[0].name for node in top_level]
    assert not [n for n in names if n and (n.startswith("airflow.providers") or n.startswith("google"))]
