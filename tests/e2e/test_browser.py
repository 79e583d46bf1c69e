"""A user in a real browser (Debian's chromium, headless, driven by Playwright): log in,
see the options form with prices, choose a configuration and an instance type, watch the
progress bar reach the end, land on the notebook server, stop it from the hub's home page.

Screenshots go to ``test-output/screenshots/``. With ``MLIY_UPDATE_DOCS_IMAGES=1`` the
options form and the progress page are also written to ``docs/img/`` (the README's).
"""

import os
import shutil
from pathlib import Path

import pytest
from hubapi import REPO, wait_for

from mliy_spawner import costviews, pricing

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Report every change of the progress bar and every line of the progress log to the test
# (the page reloads itself at the end, so the test cannot just read them afterwards).
WATCH_PROGRESS = """
document.addEventListener("DOMContentLoaded", () => {
  const bar = document.getElementById("progress-bar");
  const log = document.getElementById("progress-log");
  if (!bar || !log) return;
  new MutationObserver(() => window.mliyProgress(bar.getAttribute("aria-valuenow")))
    .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
  new MutationObserver((changes) => {
    for (const change of changes)
      for (const node of change.addedNodes) window.mliyLog(node.textContent);
  }).observe(log, {childList: true});
});
"""


@pytest.fixture
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: `apt-get install chromium`, or deselect browser tests "
            "with -m 'not browser'"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def test_log_in_choose_launch_watch_progress_and_stop(demo, browser, screenshot_dir):
    docs = REPO / "docs" / "img" if os.environ.get("MLIY_UPDATE_DOCS_IMAGES") == "1" else None
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(60_000)
    progress, log_lines = [], []
    page.expose_function("mliyProgress", lambda value: progress.append(int(value)))
    page.expose_function("mliyLog", lambda line: log_lines.append(line))
    page.add_init_script(WATCH_PROGRESS)

    def shot(name, full_page=True):
        path = screenshot_dir / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        return path

    # log in
    page.goto(f"{demo.public_url}/hub/login")
    page.fill("#username_input", "alice")
    page.fill("#password_input", demo.user_password)
    page.click("#login_submit")
    page.wait_for_url("**/hub/**")

    # the options form: alice's group allows two configurations, each with priced types
    page.goto(f"{demo.public_url}/hub/spawn")
    form = page.locator("#mliy-options")
    form.wait_for()
    config = page.locator('select[name="software_config:analysts"]')
    assert sorted(config.locator("option").all_inner_texts()) == [
        "Python notebooks",
        "Small notebooks",
    ]
    config.select_option("python")
    block = page.locator('[data-mliy-config="python"]')
    assert block.is_visible()
    assert not page.locator('[data-mliy-config="small"]').is_visible()
    assert "$/hour (us-east-1)" in block.inner_text()
    price = pricing.get_catalog(None).price("m4.xlarge", "us-east-1")
    row = block.locator("tr", has=page.locator('input[value="m4.xlarge"]'))
    assert f"${price}" in row.inner_text()
    # excluded for the group: not offered
    assert block.locator('input[value="m4.2xlarge"]').count() == 0
    page.check('input[name="instance_type:analysts:python"][value="m4.xlarge"]')
    page.fill('input[name="volume_size:analysts:python"]', "25")
    form_shot = shot("options-form")

    # start: the progress page shows the stack's events, then the instance's own steps
    page.click('button[type="submit"]')
    page.wait_for_url("**/hub/spawn-pending/alice**")
    progress_shot = None
    try:  # the page reloads itself once the server is ready: this may come too late
        page.evaluate("document.getElementById('progress-details').open = true")
        line = page.locator("#progress-log .progress-log-event", has_text="Instance:")
        line.first.wait_for(timeout=30_000)
        progress_shot = shot("progress", full_page=False)
    except Exception as e:  # noqa: BLE001 (playwright raises its own Error types)
        print(f"progress page screenshot skipped: {e}")

    # ready: the page reloads and the hub sends the browser to the server
    page.wait_for_url(f"{demo.public_url}/user/alice/**", timeout=120_000)
    assert progress and progress[-1] == 100, progress
    assert progress == sorted(progress), progress
    assert "Creating stack" in log_lines, log_lines
    assert any(line.startswith("Instance: starting the server") for line in log_lines), log_lines
    # the notebook UI: JupyterLab (the demo installs it) opens its main area
    page.wait_for_url(f"{demo.public_url}/user/alice/lab**", timeout=60_000)
    page.locator("#jp-main-dock-panel").wait_for(timeout=60_000)
    assert "JupyterLab" in page.title(), page.title()
    shot("landed")
    [stack] = demo.stacks("alice", "")
    instance_id = demo.instance_of(stack["StackId"])["InstanceId"]

    # a file on the instance's disk, opened through the proxy: the server sends the
    # browser through the hub's OAuth, then serves it
    home = demo.data_dir / "instances" / instance_id / "home" / "alice"
    (home / "hello.txt").write_text("hello from the instance\n")
    response = page.goto(f"{demo.public_url}/user/alice/files/hello.txt")
    assert response.status == 200
    assert "hello from the instance" in page.content()
    # logged in now: the server's API answers the page's requests (with the XSRF header
    # a notebook UI sends)
    page.goto(f"{demo.public_url}/user/alice/")
    status = page.evaluate(
        """async () => {
          const xsrf = document.cookie.split("; ").find((c) => c.startsWith("_xsrf="));
          const r = await fetch("/user/alice/api/status", {
            headers: {"X-XSRFToken": decodeURIComponent(xsrf.slice(6))},
          });
          return {code: r.status, body: await r.json()};
        }"""
    )
    assert status["code"] == 200, status
    assert "started" in status["body"]
    instance = demo.instance_of(stack["StackId"])
    assert instance["InstanceType"] == "m4.xlarge"
    assert instance["State"]["Name"] == "running"

    # stop it from the hub's home page
    page.goto(f"{demo.public_url}/hub/home")
    assert "Start" not in page.inner_text("#start")
    page.click("#stop")
    page.locator("#stop").wait_for(state="hidden")
    assert page.inner_text("#start").strip() == "Start My Server"
    shot("stopped")
    wait_for(
        lambda: demo.instance_of(stack["StackId"])["State"]["Name"] == "stopped",
        "the instance to stop",
    )

    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(form_shot, docs / "options-form.png")
        assert progress_shot is not None, "no progress page screenshot this time; run again"
        shutil.copy(progress_shot, docs / "progress.png")


def _log_in(browser, demo, name, password):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.set_default_timeout(60_000)
    page.goto(f"{demo.public_url}/hub/login")
    page.fill("#username_input", name)
    page.fill("#password_input", password)
    page.click("#login_submit")
    page.wait_for_url("**/hub/**")
    return page


def test_costs_on_the_form_the_home_page_and_the_cost_pages(
    demo, browser, new_user, screenshot_dir
):
    """A student (the demo's students group has a $5 monthly budget) sees the budget line
    in the form, the price of what is launched, the running server's cost on the hub's
    home page and on My costs; an admin sees it on Billing, running now."""
    docs = REPO / "docs" / "img" if os.environ.get("MLIY_UPDATE_DOCS_IMAGES") == "1" else None
    user = new_user(group="students")
    rate = costviews.rate(pricing.get_catalog(None).price("t2.small", "us-east-1"))
    page = _log_in(browser, demo, user, demo.user_password)
    shots = {}

    def shot(name, on=None):
        path = screenshot_dir / f"{name}.png"
        (on or page).screenshot(path=str(path), full_page=True)
        shots[name] = path

    # the form: this month's spend, the group's budget and what is left
    page.goto(f"{demo.public_url}/hub/spawn")
    page.locator("#mliy-options").wait_for()
    assert page.inner_text("#mliy-spend").startswith("Your spend in ")
    budget = page.inner_text(".mliy-budget")
    assert "The students group's monthly budget: $5.00;" in budget, budget
    assert "left" in budget and "Budgets reset on" in budget, budget
    row = page.locator("tr", has=page.locator('input[value="t2.small"]'))
    assert rate in row.inner_text() and "over budget" not in row.inner_text()
    shot("budget-form")

    # the spawn-pending page names what is launched and its price
    page.check('input[value="t2.small"]')
    page.click('button[type="submit"]')
    page.wait_for_url(f"**/hub/spawn-pending/{user}**")
    assert page.inner_text("#mliy-launch-price") == f"Launching t2.small at {rate}/hour."
    page.wait_for_url(f"{demo.public_url}/user/{user}/**", timeout=120_000)

    # the home page: the running server with its $/hour, hours and cost this month
    def costs_row():
        page.goto(f"{demo.public_url}/hub/home")
        rows = page.locator("#mliy-cost-table tbody tr")
        return rows.count() == 1 and rows.first.inner_text()

    wait_for(costs_row, "the ledger to open the server's interval")
    cells = page.locator("#mliy-cost-table tbody tr td").all_inner_texts()
    assert cells[:4] == ["(default server)", "t2.small", "running", rate], cells
    assert cells[5].startswith("$"), cells
    assert page.inner_text("#mliy-total").startswith("$")
    shot("home-costs")

    # My costs: the same server, per day and month to date
    page.goto(f"{demo.public_url}/services/mliy/costs")
    servers = page.locator("#servers tbody tr")
    assert servers.count() == 1 and "t2.small" in servers.first.inner_text()
    assert page.locator("figure svg").count() == 1  # the per-day chart, drawn on the server
    shot("my-costs")

    # Billing (an admin): the server is in what runs now, with its $/hour
    admin = _log_in(browser, demo, "admin", demo.admin_password)
    admin.goto(f"{demo.public_url}/services/mliy/costs/billing")
    running = admin.locator("#running tbody tr", has_text=user)
    assert running.count() == 1 and rate in running.first.inner_text()
    shot("billing", on=admin)

    r = demo.api("DELETE", f"/users/{user}/server")
    assert r.status_code in (202, 204), r.text
    wait_for(lambda: not (demo.server(user) or {}).get("ready"), "the server to stop")
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        for name, path in shots.items():
            shutil.copy(path, docs / f"{name}.png")
