"""The wheel as a user installs it: license files, typing marker, dependencies, one plugin registration."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        pytest.fail(f"uv is needed to build the wheel and is not at {uv}: make install", pytrace=False)
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [str(uv), "build", "--wheel", "-q", "-o", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("sensei_airflow-*.whl")
    return zipfile.ZipFile(path)


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (member,) = [n for n in wheel.namelist() if n.split("/")[0].endswith(".dist-info") and n.endswith(name)]
    return wheel.read(member).decode()


def test_license_notice_and_typing_marker_are_shipped(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "sensei_airflow/py.typed" in names
    assert _dist_info(wheel, "licenses/LICENSE") == (REPO / "LICENSE").read_text()
    assert "Apache License" in _dist_info(wheel, "licenses/LICENSE")
    assert _dist_info(wheel, "licenses/NOTICE") == (REPO / "NOTICE").read_text()
    metadata = Parser().parsestr(_dist_info(wheel, "METADATA"))
    assert metadata["License-Expression"] == "Apache-2.0"
    assert "Typing :: Typed" in metadata.get_all("Classifier")


def test_psycopg_plain_with_the_binary_build_an_extra_and_httpx_declared(wheel: zipfile.ZipFile) -> None:
    requires = Parser().parsestr(_dist_info(wheel, "METADATA")).get_all("Requires-Dist")
    unconditional = {r for r in requires if ";" not in r}
    assert "psycopg>=3.2" in unconditional
    assert not any(r.startswith("psycopg[binary]") for r in unconditional)
    assert "psycopg[binary]>=3.2; extra == 'binary'" in requires
    assert any(r.startswith("httpx") for r in unconditional)


def test_the_plugin_has_one_registration(wheel: zipfile.ZipFile) -> None:
    entry_points = _dist_info(wheel, "entry_points.txt")
    assert "[airflow.plugins]\nsensei = sensei_airflow.plugins.api:SenseiApiPlugin" in entry_points
    assert "[apache_airflow_provider]" in entry_points
    from sensei_airflow.get_provider_info import get_provider_info

    assert "plugins" not in get_provider_info()
