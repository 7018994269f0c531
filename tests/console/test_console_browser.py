"""The console in a real browser: Debian's Chromium driven by Playwright against a real console process.

One module-wide stack: the session's broker, a real `flowhook dispatcher` and `flowhook console`
process, a scripted loopback receiver, and a loopback profile endpoint. Every test opens a
fresh browser context (no cookies) and signs in as the user it needs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyotp
import pytest
import pytest_asyncio

from processor.clock import now_ms
from processor.console.users import UserStore
from processor.devtools.stack import WorkerProcess, apply_definitions
from processor.flows.loader import check_definition
from processor.settings import Settings
from tests.console_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    XSS,
    LoopbackServers,
    ScriptedReceiver,
    free_port,
    need_chromium,
    profile_endpoint,
    wait_http,
)
from tests.dispatch_helpers import due_record, produce, read_values

# Playwright's async API on one loop for the module: its sync API switches greenlets, which trips
# CPython 3.11's AST recursion check in pytest's later assertion rewriting.
pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]
PASSWORD = "a long console password"
TOKEN = "endpoint-token-for-tests"
FLOW_ID = "console-flow"
SHOTS = os.environ.get("FLOWHOOK_CONSOLE_SCREENSHOTS")  # e.g. docs/console to refresh the docs' pictures


@dataclass
class Stack:
    settings: Settings
    base: str
    receiver: ScriptedReceiver
    store: UserStore
    secrets: dict[str, str]
    failing: dict[str, Any]
    workers: list[WorkerProcess]
    browser: Any
    servers: LoopbackServers
    cookies: dict[str, Any] = field(default_factory=dict)

    def totp(self, name: str) -> str:
        return pyotp.TOTP(self.secrets[name]).now()


def _definition(port: int) -> dict[str, Any]:
    return {"id": FLOW_ID, "name": f"{XSS} orders", "status": "live",
            "trigger": {"metric": "Placed Order"},
            "steps": [{"webhook": {"id": "hook", "url": f"http://127.0.0.1:{port}/hook",
                                   "headers": {"Authorization": "Bearer {{ secrets.CONSOLE_TOKEN }}"},
                                   "body": {"name": "{{ person.first_name }}",
                                            "order": "{{ event.OrderId }}"}}}]}


def _users(store: UserStore) -> dict[str, str]:
    secrets = {}
    for name, role, two_factor in (("olivia", "owner", True), ("ana", "analyst", False),
                                   ("max", "manager", False)):
        store.add(name, role, PASSWORD, now_ms())
        if two_factor:
            secrets[name] = pyotp.random_base32()
            store.start_totp(name, secrets[name])
            store.use_totp_step(name, 0, enable=True)  # enrolled (step 0 is long past)
    return secrets


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    need_chromium()
    from playwright.async_api import async_playwright

    tmp = tmp_path_factory.mktemp("console")
    settings = Settings(brokers=broker.bootstrap, topic_prefix=f"c{uuid.uuid4().hex[:10]}.", partitions=2,
                        allow_networks=(ipaddress.ip_network("127.0.0.0/8"),), allow_http=True,
                        data_dir=tmp / "data", store="memory", session_timeout_ms=6_000,
                        heartbeat_interval_ms=500, rebalance_timeout_ms=6_000,
                        replication=broker.replication, idempotence=broker.kind == "kafka")
    servers, receiver = LoopbackServers(), ScriptedReceiver()
    hook_port = servers.serve(receiver.app())
    owner = servers.serve(profile_endpoint({"p_preview": {"id": "p_preview", "first_name": XSS}}, TOKEN))
    other = servers.serve(profile_endpoint({}, TOKEN))
    await apply_definitions(settings, [(_definition(hook_port), "console-test.yaml")])
    failing = due_record(f"http://127.0.0.1:{hook_port}/hook", flow_id=FLOW_ID, step_id="hook",
                         secret_headers={"Authorization": "Bearer {{ secrets.CONSOLE_TOKEN }}"})
    await produce(settings, [failing])
    store = UserStore(tmp / "users.sqlite")
    secrets = _users(store)
    port = free_port()
    env = {"FLOWHOOK_CONSOLE_USERS": str(tmp / "users.sqlite"),
           "FLOWHOOK_SECRET_CONSOLE_TOKEN": "s3cr3t-value",
           "FLOWHOOK_PROCESSOR_ENDPOINTS": f"127.0.0.1:{other},127.0.0.1:{owner}",
           "FLOWHOOK_ENDPOINT_TOKEN": TOKEN}
    workers = [WorkerProcess("dispatcher", settings, tmp / "dispatcher.log", env=env).start(),
               WorkerProcess("console", settings, tmp / "console.log", args=("--port", str(port)),
                             env=env).start()]
    playwright = await async_playwright().start()
    try:
        base = f"http://127.0.0.1:{port}"
        await asyncio.to_thread(wait_http, base + "/healthz", lambda body: b'"index_caught_up": true' in body,
                                60, str(tmp / "console.log"))
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                   args=CHROMIUM_ARGS)
        yield Stack(settings, base, receiver, store, secrets, failing, workers, browser, servers)
        await browser.close()
    finally:
        await playwright.stop()
        for worker in workers:
            worker.stop()
        servers.close()


@pytest_asyncio.fixture(loop_scope="module")
async def page(stack: Stack) -> AsyncIterator[Any]:
    context = await stack.browser.new_context(viewport={"width": 1200, "height": 800})
    try:
        yield await context.new_page()
    finally:
        await context.close()


async def sign_in(stack: Stack, page: Any, name: str) -> None:
    """Sign in through the forms; later sign-ins of a two-factor user reuse the first session's cookie
    (each TOTP code is single-use, so a second sign-in would wait up to 30 s for the next code)."""
    if name in stack.cookies:
        await page.context.add_cookies(stack.cookies[name])
        await page.goto(stack.base + "/")
        assert page.url.rstrip("/") == stack.base
        return
    await page.goto(stack.base + "/login")
    await page.fill("input[name=name]", name)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    if name in stack.secrets:
        assert "/login/totp" in page.url
        await _enter_fresh_code(stack, page, name)
        stack.cookies[name] = await page.context.cookies()
    assert page.url.rstrip("/") == stack.base, await page.content()


async def _enter_fresh_code(stack: Stack, page: Any, name: str) -> None:
    """A code of a step not used yet (each step's code is single-use, so wait for the next step if needed)."""
    step = int(time.time() // 30)
    _, last = stack.store.totp_secret(name)
    if last is not None and last >= step:
        await asyncio.sleep(30 - time.time() % 30 + 0.2)
    await page.fill("input[name=code]", stack.totp(name))
    await page.click("button[type=submit]")


async def reload_until(page: Any, url: str, selector: str, text: str, timeout_s: float = 30) -> str:
    """Reload `url` until `selector`'s text holds `text` (the index follows the topics within seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        await page.goto(url)
        found = await page.locator(selector).all_inner_texts()
        if any(text in t for t in found) or time.monotonic() > deadline:
            assert any(text in t for t in found), f"{text!r} not in {selector} of {url}: {found}"
            return "\n".join(found)
        await asyncio.sleep(0.3)


async def shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a test helper, once per picture
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


async def csrf_of(page: Any) -> str:
    return str(await page.locator("input[name=csrf]").first.get_attribute("value"))


async def test_sign_in_needs_password_and_a_single_use_totp_code(stack: Stack, page: Any) -> None:
    """Wrong password is refused; the right one leads to the code page; the code signs in, once only."""
    await page.goto(stack.base + "/flows/" + FLOW_ID)
    assert "/login" in page.url
    await shot(page, "login")
    await page.fill("input[name=name]", "olivia")
    await page.fill("input[name=password]", "not the password")
    await page.click("button[type=submit]")
    assert "wrong name or password" in await page.inner_text("[role=alert]")
    await sign_in(stack, page, "olivia")
    assert "olivia (owner, 2FA)" in await page.inner_text("nav")
    _, used_step = stack.store.totp_secret("olivia")
    code = pyotp.TOTP(stack.secrets["olivia"]).at(used_step * 30)
    other = await (await stack.browser.new_context()).new_page()
    await other.goto(stack.base + "/login")
    await other.fill("input[name=name]", "olivia")
    await other.fill("input[name=password]", PASSWORD)
    await other.click("button[type=submit]")
    await other.fill("input[name=code]", code)
    await other.click("button[type=submit]")
    assert "already used" in await other.inner_text("[role=alert]")
    await other.context.close()


async def test_a_failing_delivery_shows_in_failures_with_its_excerpt_as_text(stack: Stack, page: Any) -> None:
    """The receiver's 400 is on the failures page; its `<script>` excerpt and the flow name are plain text."""
    await sign_in(stack, page, "olivia")
    delivery = stack.failing["delivery_id"]
    text = await reload_until(page, stack.base + "/failures", "table.deliveries", delivery)
    assert "failed" in text and "HTTP 400" in text and XSS in text
    assert await page.evaluate("window.__owned === undefined")
    await shot(page, "failures")
    await page.goto(stack.base + "/")
    assert f"{XSS} orders" in await page.inner_text("table")
    assert await page.locator("main script").count() == 0
    await shot(page, "flows")
    await page.goto(stack.base + f"/deliveries/{stack.failing['delivery_id']}")
    detail = await page.inner_text("main")
    assert XSS in await page.inner_text("pre.excerpt") and "400" in detail
    assert "Authorization: Bearer ••••" in await page.inner_text("pre.request")
    assert "s3cr3t-value" not in await page.content()
    assert f"webhook-id: {stack.failing['delivery_id']}" in await page.inner_text("pre.request")
    await shot(page, "delivery")


async def test_replay_from_the_page_sends_again_with_the_same_webhook_id(stack: Stack, page: Any) -> None:
    """Replay asks to confirm, re-sends via the real dispatcher with the same webhook-id, shows progress."""
    await sign_in(stack, page, "olivia")
    delivery = stack.failing["delivery_id"]
    await reload_until(page, stack.base + f"/deliveries/{delivery}", "#latest-outcome", "failed")
    stack.receiver.accept = True
    await page.click("text=Replay this delivery…")
    assert delivery in await page.inner_text("main")
    await shot(page, "replay-confirm")
    await page.click("#confirm-replay")
    assert "/replays/rpl_" in page.url
    await reload_until(page, page.url, "#replay-progress", "1 of 1")
    await shot(page, "replay-progress")
    await reload_until(page, stack.base + f"/deliveries/{delivery}", "#latest-outcome", "delivered")
    assert await page.locator("tr.attempt").count() == 2
    assert stack.receiver.seen.count(delivery) == 2 and set(stack.receiver.seen) == {delivery}
    audit = await read_values(stack.settings, stack.settings.topics.audit)
    replays = [a for a in audit if a["action"] == "delivery.replay"]
    assert replays and replays[-1]["who"] == "olivia" and replays[-1]["detail"]["webhook_ids"] == [delivery]


CHANGES = [("/flows/{flow}/status", {"status": "manual"}),
           ("/publish", {"text": "id: x"}),
           ("/deliveries/{delivery}/replay", {}),
           ("/flows/{flow}/replay", {"confirm": "yes"}),
           ("/held", {"action": "cancel", "delivery_id": "dlv_none"})]


async def _post_all(stack: Stack, page: Any, csrf: str | None,
                    headers: dict[str, str] | None = None) -> list[int]:
    statuses = []
    for path, form in CHANGES:
        url = stack.base + path.format(flow=FLOW_ID, delivery=stack.failing["delivery_id"])
        data = {**form, **({"csrf": csrf} if csrf is not None else {})}
        answer = await page.request.post(url, form=data, headers=headers or {}, max_redirects=0)
        statuses.append(answer.status)
    return statuses


async def test_an_analyst_gets_403_on_every_change(stack: Stack, page: Any) -> None:
    """Status, publish, replay of one and of many: all 403 for an analyst, from the page and by POST."""
    await sign_in(stack, page, "ana")
    await page.goto(stack.base + f"/flows/{FLOW_ID}")
    await page.click("text=Change status")
    assert "reads only" in await page.inner_text("[role=alert]")
    assert await _post_all(stack, page, await csrf_of(page)) == [403] * len(CHANGES)
    audit = await read_values(stack.settings, stack.settings.topics.audit)
    assert not [a for a in audit if a["who"] == "ana"]


async def test_a_manager_without_two_factor_cannot_edit_a_webhook_step(stack: Stack, page: Any) -> None:
    """Edit and status change are refused until the manager enrols TOTP; then publishing works, audited."""
    await sign_in(stack, page, "max")
    await page.goto(stack.base + f"/flows/{FLOW_ID}/edit")
    text = await page.input_value("textarea[name=text]")
    await page.fill("textarea[name=text]", text.replace("{{ event.OrderId }}", "{{ event.OrderId }}-edited"))
    await page.click("#publish")
    assert "two-factor" in await page.inner_text("[role=alert]")
    await page.goto(stack.base + f"/flows/{FLOW_ID}")
    await page.click("text=Change status")
    assert "two-factor" in await page.inner_text("[role=alert]")
    await page.goto(stack.base + "/account")
    await page.click("text=Set up two-factor sign-in")
    assert (await page.locator("img[alt^='QR code']").get_attribute("src")).startswith("data:image/svg+xml")
    secret = await page.inner_text("#totp-secret")
    await shot(page, "account-2fa")
    stack.secrets["max"] = secret
    await page.fill("input[name=code]", pyotp.TOTP(secret).now())
    await page.click("text=Turn on two-factor sign-in")
    assert await page.inner_text("#twofactor") == "on"
    await page.goto(stack.base + f"/flows/{FLOW_ID}/edit")
    await shot(page, "edit")
    await page.fill("textarea[name=text]", text.replace("{{ event.OrderId }}", "{{ event.OrderId }}-edited"))
    await page.click("#publish")
    assert "changed=publish&version=2" in page.url, await page.inner_text("main")
    await reload_until(page, stack.base + f"/flows/{FLOW_ID}", "table.audit", "flow.publish")
    assert "max (manager)" in await page.inner_text("table.audit")
    await shot(page, "flow")


async def test_publishing_a_broken_file_shows_the_validate_messages(stack: Stack, page: Any) -> None:
    """A file with problems is not published; the page lists exactly what `flows validate` would print."""
    await sign_in(stack, page, "olivia")
    broken = "id: broken-flow\nname: Broken\nstatus: sometimes\ntrigger: {metric: Placed Order}\nsteps: []\n"
    await page.goto(stack.base + "/publish")
    await page.fill("textarea[name=text]", broken)
    await page.click("#publish")
    shown = await page.locator("ul.problems li").all_inner_texts()
    from processor.flows.loader import parse_text

    data, lines = parse_text(broken)
    expected = [str(p) for p in check_definition(data, source="console.yaml", lines=lines).problems]
    assert shown == expected and expected


async def test_posts_without_the_csrf_token_are_refused(stack: Stack, page: Any) -> None:
    """No token, a wrong token, or another origin: every state-changing POST is refused with 403."""
    await sign_in(stack, page, "olivia")
    assert await _post_all(stack, page, None) == [403] * len(CHANGES)
    assert await _post_all(stack, page, "wrong-token") == [403] * len(CHANGES)
    good = await csrf_of(page)
    assert await _post_all(stack, page, good, {"Origin": "http://127.0.0.2:9"}) == [403] * len(CHANGES)
    assert (await page.request.post(stack.base + "/logout", max_redirects=0)).status == 403
    anonymous = await (await stack.browser.new_context()).new_page()
    refused = await anonymous.request.post(stack.base + "/login", max_redirects=0,
                                           form={"name": "olivia", "password": PASSWORD})
    assert refused.status == 403
    await anonymous.context.close()


async def test_preview_renders_a_step_for_a_profile_a_processor_holds(stack: Stack, page: Any) -> None:
    """The console asks each processor endpoint, uses the owner's profile, and shows the request escaped."""
    await sign_in(stack, page, "olivia")
    await page.goto(stack.base + f"/flows/{FLOW_ID}/preview")
    await page.fill("input[name=profile_id]", "p_preview")
    await page.fill("textarea[name=event]", '{"metric": "Placed Order", "properties": {"OrderId": "A-1"}}')
    await page.click("button[type=submit]")
    result = await page.inner_text("pre.preview")
    assert "POST http://127.0.0.1:" in result and '"order": "A-1' in result
    assert XSS.replace('"', '\\"') in result or XSS in result
    assert "Authorization: Bearer ••••" in result
    assert "does not own this profile" in await page.inner_text("main")
    assert await page.evaluate("window.__owned === undefined")
    await shot(page, "preview")
    await page.fill("input[name=profile_id]", "p_nobody")
    await page.click("button[type=submit]")
    assert "no processor holds profile 'p_nobody'" in await page.inner_text("main")


async def test_activity_log_filters_and_audit_page(stack: Stack, page: Any) -> None:
    """The activity log finds the delivery by profile id and by outcome; the audit page lists changes."""
    await sign_in(stack, page, "olivia")
    url = stack.base + f"/flows/{FLOW_ID}/activity?q={stack.failing['profile_id']}"
    await reload_until(page, url, "table.deliveries", stack.failing["delivery_id"])
    await shot(page, "activity")
    await page.goto(stack.base + f"/flows/{FLOW_ID}/activity?outcome=dead")
    assert "No deliveries match." in await page.inner_text("table.deliveries")
    await page.goto(stack.base + "/audit")
    assert re.search(r"delivery\.replay|flow\.publish|user\.enable_2fa", await page.inner_text("table.audit"))


async def test_held_deliveries_wait_for_review_and_send_goes_out_with_the_webhook_id(stack: Stack,
                                                                                     page: Any) -> None:
    """A manual flow's delivery waits on the Needs-Review page; Send releases it through the dispatcher."""
    stack.receiver.accept = True
    waiting = due_record(stack.failing["request"]["url"], mode="held", flow_id=FLOW_ID, step_id="hook")
    await produce(stack.settings, [waiting])
    await sign_in(stack, page, "olivia")
    delivery = waiting["delivery_id"]
    await reload_until(page, stack.base + "/held", "table.held", delivery)
    assert delivery not in stack.receiver.seen
    await shot(page, "held")
    await page.check(f"input[value={delivery}]")
    await page.click("#held-send")
    assert "done=send+1" in page.url, await page.inner_text("main")
    await reload_until(page, stack.base + f"/deliveries/{delivery}", "#latest-outcome", "delivered")
    assert stack.receiver.seen.count(delivery) == 1
    audit = await read_values(stack.settings, stack.settings.topics.audit)
    assert [a["detail"]["webhook_ids"] for a in audit if a["action"] == "held.send"] == [[delivery]]


async def test_sign_in_is_rate_limited_after_five_failures(stack: Stack, page: Any) -> None:
    """Five failed sign-ins within five minutes: the next one is refused with 429 even with the right
    password (last in the module: the limit also counts the client address, loopback here)."""
    statuses = []
    for attempt in range(7):
        await page.goto(stack.base + "/login")
        answer = await page.request.post(stack.base + "/login", max_redirects=0, form={
            "csrf": await csrf_of(page), "name": "ana",
            "password": PASSWORD if attempt == 6 else "wrong password"})
        statuses.append(answer.status)
    assert statuses.count(401) >= 3 and statuses[-2:] == [429, 429], statuses
    assert "too many failed sign-ins" in await (await page.request.post(
        stack.base + "/login", max_redirects=0,
        form={"csrf": await csrf_of(page), "name": "ana", "password": PASSWORD})).text()
