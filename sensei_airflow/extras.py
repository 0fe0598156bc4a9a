"""Optional providers: the error raised when one is missing names the extra that installs it."""

from __future__ import annotations


def missing_extra(extra: str, provider: str, needed_for: str = "this target") -> Exception:
    """The error to raise when ``provider`` cannot be imported: what needs it and what to install."""
    from airflow.sdk.exceptions import AirflowOptionalProviderFeatureException

    return AirflowOptionalProviderFeatureException(
        f"the {provider} provider is needed for {needed_for}: pip install 'sensei-airflow[{extra}]'"
    )
