"""The one client of Airflow's public REST API (``/api/v2``) that sensei uses.

Halt and resume pause and unpause consumer DAGs and look up the DAGs scheduled on Assets with
it (tasks may not touch the metadata DB in Airflow 3); the demo launcher and the end-to-end
tests wait for the api-server and unpause DAGs with it. Authenticated with a JWT from
``POST /auth/token``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

DEFAULT_API_CONN_ID = "sensei_airflow_api"


class AirflowApiError(RuntimeError):
    """Airflow's REST API answered with an error.

    :param message: what was asked and what came back.
    :param status: the HTTP status, when there was an answer.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AirflowApi:
    """A small client of Airflow's public REST API (``/api/v2``), authenticated with a JWT.

    :param base_url: the api-server's URL, e.g. ``http://127.0.0.1:8080``.
    :param username: user for ``POST /auth/token``.
    :param password: its password.
    """

    def __init__(
        self, base_url: str, username: str | None, password: str | None, *, timeout: float = 30
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._token: str | None = None

    @classmethod
    def from_connection(cls, conn_id: str) -> AirflowApi:
        """Build from an Airflow connection: host (or URL), port, schema (http/https), login, password."""
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        host = conn.host or ""
        if "://" not in host:
            scheme = conn.schema or "http"
            host = f"{scheme}://{host}" + (f":{conn.port}" if conn.port else "")
        return cls(host, conn.login, conn.password)

    def token(self) -> str:
        """A JWT from ``POST /auth/token`` (fetched once, renewed when rejected)."""
        import httpx

        if self._token is None:
            response = httpx.post(
                f"{self.base_url}/auth/token",
                json={"username": self.username, "password": self.password},
                timeout=self.timeout,
            )
            if response.status_code >= 400:
                raise AirflowApiError(
                    f"POST /auth/token: HTTP {response.status_code} {response.text[:200]}",
                    response.status_code,
                )
            self._token = response.json()["access_token"]
        return self._token

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; a rejected token is renewed once."""
        import httpx

        for attempt in (1, 2):
            response = httpx.request(
                method,
                f"{self.base_url}{path}",
                headers={"Authorization": f"Bearer {self.token()}"},
                timeout=self.timeout,
                **kwargs,
            )
            if response.status_code == 401 and attempt == 1:
                self._token = None
                continue
            if response.status_code >= 400:
                raise AirflowApiError(
                    f"{method} {path}: HTTP {response.status_code} {response.text[:300]}",
                    response.status_code,
                )
            return response.json() if response.content else None
        raise AirflowApiError(f"{method} {path}: not authorised")  # pragma: no cover - loop returns

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header of this client's token."""
        return {"Authorization": f"Bearer {self.token()}"}

    def health(self) -> dict[str, Any]:
        """``GET /api/v2/monitor/health`` (needs no login): each component's status."""
        import httpx

        response = httpx.get(f"{self.base_url}/api/v2/monitor/health", timeout=self.timeout)
        if response.status_code >= 400:
            raise AirflowApiError(f"GET /api/v2/monitor/health: HTTP {response.status_code}")
        return dict(response.json())

    def dag(self, dag_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}")

    def dag_exists(self, dag_id: str) -> bool:
        """Whether the api-server knows the DAG (it has been parsed)."""
        try:
            self.dag(dag_id)
        except AirflowApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def dag_ids(self, page_size: int = 100) -> list[str]:
        """Every DAG the api-server knows."""
        found: list[str] = []
        while True:
            page = self.request("GET", "/api/v2/dags", params={"limit": page_size, "offset": len(found)})
            items = [d["dag_id"] for d in page.get("dags", [])]
            found += items
            if not items or len(found) >= page.get("total_entries", 0):
                return found

    def set_paused(self, dag_id: str, paused: bool) -> dict[str, Any]:
        return self.request(
            "PATCH",
            f"/api/v2/dags/{quote(dag_id, safe='')}",
            params={"update_mask": "is_paused"},
            json={"is_paused": paused},
        )

    def assets(self, page_size: int = 100) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self.request("GET", "/api/v2/assets", params={"limit": page_size, "offset": offset})
            items = page.get("assets", [])
            yield from items
            offset += len(items)
            if not items or offset >= page.get("total_entries", 0):
                return

    def dag_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}")


def api_conn_id() -> str:
    """``[sensei] airflow_api_conn_id`` (default ``sensei_airflow_api``)."""
    from airflow.sdk import conf

    return conf.get("sensei", "airflow_api_conn_id", fallback=DEFAULT_API_CONN_ID) or DEFAULT_API_CONN_ID


def connect_api() -> AirflowApi | None:
    """The API client, or ``None`` when its connection is not defined."""
    from airflow.sdk import BaseHook

    conn_id = api_conn_id()
    try:
        BaseHook.get_connection(conn_id)
    except Exception:
        return None
    return AirflowApi.from_connection(conn_id)
