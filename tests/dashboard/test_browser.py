"""The dashboard pages in headless Chromium: sign-in, numbers, picker, search.

Screenshots of each view go to artifacts/screenshots/ (not committed).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.policy.v1 import policy_pb2, policy_pb2_grpc
from tests.dashboard.support import expected_usage, new_user, send_calls
from tests.support.stack import RunningStack, admin_channel

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
WAIT_S = 20

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="Debian's chromium and chromium-driver are not installed (make install "
    "installs them when run as root)",
)


@dataclass
class Users:
    alice: str
    bob: str


@pytest.fixture(scope="module")
def users(stack: RunningStack) -> Users:
    alice, bob = new_user("alice"), new_user("bob")
    send_calls(stack, alice, 3, "alice")
    send_calls(stack, bob, 2, "bob")
    return Users(alice, bob)


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="tollgate-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM or ""
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,2200",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(
        options=options, service=Service(executable_path=CHROMEDRIVER or "")
    )
    try:
        yield browser
    finally:
        browser.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _wait(driver, condition, message: str):  # type: ignore[no-untyped-def]
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(lambda d: condition(d), message)


def _kpi(driver, name: str) -> str:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    element = driver.find_element(By.CSS_SELECTOR, f'[data-kpi="{name}"]')
    return element.get_attribute("data-value") or ""


def _open_dashboard(driver, stack: RunningStack, query: str = "") -> None:  # type: ignore[no-untyped-def]
    driver.get(f"{stack.ingress_url}/dashboard/{query}")
    _wait(
        driver,
        lambda d: d.execute_script("return document.body.dataset.loaded") == "1",
        "the dashboard did not finish loading",
    )


def _sign_in_as_user(driver, stack: RunningStack, user_id: str) -> None:  # type: ignore[no-untyped-def]
    """Sign in through the form with a gateway key issued for ``user_id``."""
    from selenium.webdriver.common.by import By

    with admin_channel(stack.stack.policy_address) as channel:
        admin = policy_pb2_grpc.PolicyAdminServiceStub(channel)
        issued = admin.CreateKey(
            policy_pb2.CreateKeyRequest(user_id=user_id), timeout=5
        )
    driver.delete_all_cookies()
    driver.get(f"{stack.ingress_url}/dashboard/login")
    driver.find_element(By.ID, "gateway-key").send_keys(issued.secret)
    driver.find_element(By.ID, "gateway-key-submit").click()
    _wait(
        driver,
        lambda d: d.execute_script("return document.body.dataset.loaded") == "1",
        "gateway-key sign-in did not load the dashboard",
    )


def _screenshot(driver, name: str) -> None:  # type: ignore[no-untyped-def]
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def test_operator_view_lists_users(driver, stack: RunningStack, users: Users) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(f"{stack.ingress_url}/dashboard/")
    assert driver.current_url.endswith("/dashboard/login")
    _screenshot(driver, "sign-in")
    driver.find_element(By.ID, "admin-token").send_keys(stack.stack.admin_token)
    driver.find_element(By.ID, "admin-token-submit").click()
    _wait(
        driver,
        lambda d: d.execute_script("return document.body.dataset.loaded") == "1",
        "operator sign-in did not load the dashboard",
    )
    assert driver.execute_script("return document.body.dataset.view") == "operator"

    alice_row = driver.find_element(
        By.CSS_SELECTOR, f'#users-table tbody tr[data-user="{users.alice}"]'
    )
    cells = [cell.text for cell in alice_row.find_elements(By.TAG_NAME, "td")]
    expected = expected_usage(stack, users.alice)
    assert cells[0] == users.alice
    assert cells[3] == str(expected["calls"])
    total = sum(
        expected[kind]
        for kind in (
            "input_tokens",
            "output_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
        )
    )
    assert cells[2].replace(",", "") == str(total)

    driver.find_element(By.CSS_SELECTOR, '#users-table th[data-sort="calls"]').click()
    calls_column = [
        int(row.find_elements(By.TAG_NAME, "td")[3].text.replace(",", ""))
        for row in driver.find_elements(By.CSS_SELECTOR, "#users-table tbody tr")
    ]
    assert calls_column == sorted(calls_column, reverse=True)
    _screenshot(driver, "operator-view")

    _open_dashboard(driver, stack, f"?user={users.bob}")
    assert driver.execute_script("return document.body.dataset.view") == "user"
    assert _kpi(driver, "calls") == "2"
    _screenshot(driver, "operator-viewing-user")


def test_user_view_matches_clickhouse(
    driver, stack: RunningStack, users: Users
) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _sign_in_as_user(driver, stack, users.alice)
    _open_dashboard(driver, stack)
    assert driver.execute_script("return document.body.dataset.view") == "user"
    expected = expected_usage(stack, users.alice)
    for name in ("calls", "input_tokens", "output_tokens", "cache_read_tokens"):
        assert _kpi(driver, name) == str(expected[name]), name
    assert _kpi(driver, "latency") == ",".join(str(v) for v in expected["latency"])
    assert _kpi(driver, "errors") == str(expected["errors"])
    limits_text = driver.find_element(By.ID, "limits").text
    assert (
        "not configured" in limits_text
        or "No limit applies" in limits_text
        or " of " in limits_text
    ), limits_text
    rows = driver.find_elements(By.CSS_SELECTOR, "#calls-table tbody tr[data-event-id]")
    assert (
        sorted(row.get_attribute("data-event-id") for row in rows)
        == expected["event_ids"]
    )
    _screenshot(driver, "user-view")

    # Time-range picker: last hour keeps the calls, a past day has none.
    Select(driver.find_element(By.ID, "range")).select_by_value("1h")
    _wait(driver, lambda d: _kpi(d, "calls") == str(expected["calls"]), "last hour")
    Select(driver.find_element(By.ID, "range")).select_by_value("custom")
    driver.execute_script(
        "document.getElementById('custom-start').value = '2020-01-01T00:00';"
        "document.getElementById('custom-end').value = '2020-01-02T00:00';"
    )
    driver.find_element(By.ID, "apply-range").click()
    _wait(driver, lambda d: _kpi(d, "calls") == "0", "custom range in 2020")
    Select(driver.find_element(By.ID, "range")).select_by_value("24h")
    _wait(driver, lambda d: _kpi(d, "calls") == str(expected["calls"]), "last day")

    # Call search, then one call's payloads and timings.
    driver.find_element(By.ID, "call-search").send_keys("alice question 1")
    driver.find_element(By.ID, "call-search-submit").click()
    _wait(
        driver,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#calls-table tbody tr")) == 1,
        "search for one call",
    )
    driver.find_element(By.CSS_SELECTOR, "#calls-table tbody tr[data-event-id]").click()
    _wait(
        driver,
        lambda d: "alice question 1" in d.find_element(By.ID, "call-request-body").text,
        "call detail",
    )
    assert "Time to first token" in driver.find_element(By.ID, "call-timings").text
    assert "sk-ant-test" not in driver.page_source
    _screenshot(driver, "user-call-detail")


def test_user_cannot_view_other_user(driver, stack: RunningStack, users: Users) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    _sign_in_as_user(driver, stack, users.alice)
    _open_dashboard(driver, stack, f"?user={users.bob}")
    error = driver.find_element(By.ID, "error")
    assert error.is_displayed()
    assert "own user" in error.text
    assert _kpi(driver, "calls") == ""
    assert users.bob not in driver.find_element(By.ID, "calls-table").text
    _screenshot(driver, "user-denied-other-user")

    response = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "fetch('/dashboard/api/v1/calls?range=1h&user_id=' + arguments[0])"
        ".then(r => done(r.status));",
        users.bob,
    )
    assert response == 403
