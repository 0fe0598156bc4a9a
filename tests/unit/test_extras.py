"""A missing optional provider fails with one line naming what needs it and the extra to install."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowOptionalProviderFeatureException


def _s3_hook() -> Any:
    from sensei_airflow.backups.storage import S3Storage

    return S3Storage("s3://rollback-backups/mig_shop_2026").hook


def _gcs_hook() -> Any:
    from sensei_airflow.backups.storage import GCSStorage

    return GCSStorage("gs://rollback-backups/mig_shop_2026").hook


def _snowflake_hook() -> Any:
    from sensei_airflow.engines.snowflake import SnowflakeEngine

    return SnowflakeEngine("warehouse")._make_hook()


@pytest.mark.parametrize(
    ("provider_module", "reach", "message"),
    [
        pytest.param(
            "airflow.providers.amazon.aws.hooks.s3",
            _s3_hook,
            "the Amazon provider is needed for s3:// backup locations: pip install 'sensei-airflow[amazon]'",
            id="s3",
        ),
        pytest.param(
            "airflow.providers.google.cloud.hooks.gcs",
            _gcs_hook,
            "the Google provider is needed for gs:// backup locations: pip install 'sensei-airflow[google]'",
            id="gcs",
        ),
        pytest.param(
            "airflow.providers.snowflake.hooks.snowflake",
            _snowflake_hook,
            "the Snowflake provider is needed for this target: pip install 'sensei-airflow[snowflake]'",
            id="snowflake",
        ),
    ],
)
def test_a_missing_provider_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, provider_module: str, reach: Callable[[], Any], message: str
) -> None:
    monkeypatch.setitem(sys.modules, provider_module, None)  # import fails as if not installed
    with pytest.raises(AirflowOptionalProviderFeatureException) as raised:
        reach()
    assert str(raised.value) == message
