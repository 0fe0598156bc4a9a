"""The trigger form of ``sensei_rollback`` in a real browser (headless Chromium) on a running Airflow.

Logs in, opens the form, checks what a DBA sees first, fills it (truncate, scope tables, two
tables), submits, and watches the run succeed in the UI. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.airflow_server import ADMIN, AirflowServer

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("SENSEI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium is needed for the browser test and {CHROMIUM} is missing: run scripts/ensure-chromium.sh "
            "(apt-get install chromium) or set SENSEI_CHROMIUM",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _pick(dialog: Any, field: str, value: str) -> None:
    """Choose ``value`` in the form's select for ``field`` (a combobox holding a hidden input)."""
    combobox = dialog.locator(
        f"xpath=//input[@name='element_{field}']/ancestor::div[.//input[@role='combobox']][1]//input[@role='combobox']"
    )
    combobox.click()
    combobox.fill(value)
    # Each option's label starts with its value ("tables: The tables listed in tables").
    dialog.page.get_by_role("option", name=re.compile(f"^{re.escape(value)}:")).click()
    hidden = dialog.locator(f"input[name=element_{field}]")
    deadline = time.monotonic() + 10
    while hidden.input_value() != value:
        assert time.monotonic() < deadline, f"{field} did not take {value!r}: {hidden.input_value()!r}"
        time.sleep(0.1)


def test_trigger_form_truncates_two_tables(airflow_server: AirflowServer, browser: Any) -> None:
    airflow_server.migrate_demo()
    customers = airflow_server.scalar("target", "SELECT count(*) FROM crm.customers")
    assert airflow_server.scalar("target", "SELECT count(*) FROM sales.orders") > 0
    reason = f"browser test {uuid.uuid4().hex[:8]}"
    ARTIFACTS.mkdir(exist_ok=True)

    page = browser.new_page(viewport={"width": 1400, "height": 1600})
    page.set_default_timeout(60_000)
    page.goto(f"{airflow_server.url}/auth/login")
    page.fill("input[name=username]", ADMIN.username)
    page.fill("input[name=password]", ADMIN.password)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{airflow_server.url}/")

    page.goto(f"{airflow_server.url}/dags/sensei_rollback")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.locator("[role=dialog][data-state=open]")
    dialog.locator("input[name=element_dry_run]").wait_for(state="attached")

    # What a DBA sees first, without unfolding anything: dry run first, then what to roll back.
    names = dialog.locator("[name^=element_]").evaluate_all("els => els.map(e => e.name)")
    main = ["dry_run", "migration_id", "strategy", "scope", "phase", "tables", "reason"]
    assert names[: len(main)] == [f"element_{n}" for n in main], names
    assert dialog.get_by_text("Plan and report only").is_visible()
    assert dialog.locator("#element_tables").is_visible()
    assert not dialog.locator("input[name=element_dry_run]").is_checked()

    dialog.locator("#element_migration_id").fill("mig_shop_2026")
    _pick(dialog, "strategy", "truncate")
    _pick(dialog, "scope", "tables")
    dialog.locator("#element_tables").fill("orders\norder_items")
    dialog.locator("#element_reason").fill(reason)
    page.screenshot(path=str(ARTIFACTS / "trigger-form-filled.png"), full_page=True)
    dialog.get_by_role("button", name="Strategy options").click()
    picker = dialog.locator(
        "xpath=//label[starts-with(normalize-space(.), 'Restore to')]"
        "/ancestor::div[.//*[@data-testid='datetime-input']][1]//*[@data-testid='datetime-input']"
    )
    picker.wait_for(state="visible", timeout=60_000)  # restore_to is a date-time picker
    dialog.get_by_test_id("trigger-dag-submit").click()

    run = _run_with_reason(airflow_server, reason)
    assert run["conf"] == {
        "dry_run": False,
        "migration_id": "mig_shop_2026",
        "strategy": "truncate",
        "scope": "tables",
        "tables": ["orders", "order_items"],
        "reason": reason,
        **{k: v for k, v in run["conf"].items() if k in ("phase", "restore_to", "backup_id", "verify_after")},
    }
    finished = airflow_server.wait_for_run("sensei_rollback", run["dag_run_id"])
    assert finished["state"] == "success", airflow_server.task_states("sensei_rollback", run["dag_run_id"])

    page.goto(f"{airflow_server.url}/dags/sensei_rollback/runs/{run['dag_run_id']}")
    page.get_by_text("success", exact=False).first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "trigger-form-run-succeeded.png"), full_page=True)
    page.close()

    assert airflow_server.scalar("target", "SELECT count(*) FROM sales.order_items") == 0
    assert airflow_server.scalar("target", "SELECT count(*) FROM sales.orders") == 0
    assert airflow_server.scalar("target", "SELECT count(*) FROM crm.customers") == customers
    assert (ARTIFACTS / "trigger-form-run-succeeded.png").stat().st_size > 10_000


def _run_with_reason(server: AirflowServer, reason: str, timeout: float = 60) -> dict[str, Any]:
    """The run the form started (its conf carries this test's unique reason)."""
    deadline = time.monotonic() + timeout
    with server.client(ADMIN) as client:
        while True:
            response = client.get("/api/v2/dags/sensei_rollback/dagRuns", params={"order_by": "-run_after"})
            response.raise_for_status()
            runs = [r for r in response.json()["dag_runs"] if (r.get("conf") or {}).get("reason") == reason]
            if runs:
                return runs[0]
            assert time.monotonic() < deadline, "the form did not start a run"
            time.sleep(0.5)
