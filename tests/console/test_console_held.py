"""The console's Needs-Review page (processor/console/pages_held.py, on processor.dispatch.held) without a
browser: a manager lists, sends and cancels held deliveries (the queue of `flowhook held`), an
analyst may not, every change is audited (the real console app over loopback HTTP, the real
dispatcher and broker, a loopback receiver). The browser test runs only where Chromium is."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from processor.clock import now_ms
from processor.console.app import make_app
from processor.console.context import Console, ConsoleConfig
from processor.console.sessions import COOKIE
from processor.console.users import UserStore
from processor.dispatch.held import read_queue
from processor.dispatch.worker import DispatcherOptions, run_dispatcher
from processor.settings import Settings
from tests.dispatch_helpers import ScriptedReceiver, due_record, produce, read_values

PASSWORD = "a long console password"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


pytestmark = pytest.mark.quick_groups


async def _drain(settings: Settings) -> None:
    await asyncio.wait_for(run_dispatcher(settings, options=DispatcherOptions(drain_idle_s=1.0)), timeout=90)


class Browser:
    """A signed-in user over plain HTTP; the session cookie is sent by hand (it is Secure)."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http, self.base, self.cookie, self.csrf = http, base, "", ""

    async def get(self, path: str) -> str:
        async with self.http.get(self.base + path, headers={"Cookie": f"{COOKIE}={self.cookie}"},
                                 allow_redirects=False) as answer:
            text = await answer.text()
            found = CSRF.search(text)
            self.csrf = found.group(1) if found else self.csrf
            self.cookie = answer.cookies[COOKIE].value if COOKIE in answer.cookies else self.cookie
            return text

    async def post(self, path: str, **form: str) -> aiohttp.ClientResponse:
        headers = {"Cookie": f"{COOKIE}={self.cookie}"}
        async with self.http.post(self.base + path, data={**form, "csrf": self.csrf}, headers=headers,
                                  allow_redirects=False) as answer:
            await answer.read()
            if COOKIE in answer.cookies:
                self.cookie = answer.cookies[COOKIE].value
            return answer

    async def get_until(self, path: str, texts: list[str], timeout_s: float = 30.0) -> str:
        """GET until every text is on the page (the console's index follows the topics)."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            page = await self.get(path)
            if all(t in page for t in texts) or asyncio.get_running_loop().time() > deadline:
                assert all(t in page for t in texts), page
                return page
            await asyncio.sleep(0.3)

    async def sign_in(self, name: str) -> None:
        await self.get("/login")
        answer = await self.post("/login", name=name, password=PASSWORD, next="/held")
        assert answer.status == 303, answer.status
        await self.get("/held")


# The console app runs in this test's process, where warnings are errors; aiohttp 3.14 warns
# about two habits of processor/console (str request keys, and sign-in returning an HTTPSeeOther
# instead of raising it), which its own tests, running the console as a process, do not see.
@pytest.mark.filterwarnings("ignore:It is recommended to use web.RequestKey")
@pytest.mark.filterwarnings("ignore:returning HTTPException object is deprecated")
async def test_manager_sends_and_cancels_from_the_page_analyst_may_not(
        settings: Settings, tmp_path: Path) -> None:
    """Listed on /held; Send keeps the webhook-id; Cancel all of a flow; analysts get 403; all audited."""
    receiver = await ScriptedReceiver().start()
    review = [due_record(receiver.url("/crm"), mode="held", flow_id="review") for _ in range(2)]
    other = due_record(receiver.url("/crm"), mode="held", flow_id="other")
    await produce(settings, [*review, other])
    await _drain(settings)  # the dispatcher queues them: held copies and `held` results
    store = UserStore(tmp_path / "users.sqlite")
    store.add("max", "manager", PASSWORD, now_ms())
    store.add("ana", "analyst", PASSWORD, now_ms())
    store.close()
    config = ConsoleConfig(folder=tmp_path / "console", users_path=tmp_path / "users.sqlite")
    console = Console(settings, config)
    runner = web.AppRunner(make_app(console), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        async with aiohttp.ClientSession() as http:
            manager, analyst = Browser(http, base), Browser(http, base)
            await manager.sign_in("max")
            page = await manager.get_until("/held", [d["delivery_id"] for d in (*review, other)])
            assert "Send the selected" in page
            sent = await manager.post("/held", action="send", delivery_id=review[0]["delivery_id"])
            assert (sent.status, sent.headers["Location"]) == (303, "/held?done=send+1")
            cancelled = await manager.post("/held", action="cancel", flow="other")
            assert (cancelled.status, cancelled.headers["Location"]) == (303, "/held?done=cancel+1")
            await analyst.sign_in("ana")
            refused = await analyst.post("/held", action="send", delivery_id=review[1]["delivery_id"])
            assert refused.status == 403
        await _drain(settings)
        left = await read_queue(settings)
    finally:
        await runner.cleanup()
        await receiver.stop()
    assert [h.delivery_id for h in left] == [review[1]["delivery_id"]]
    assert len(receiver.hits_for(review[0]["delivery_id"])) == 1 and len(receiver.hits) == 1
    audit = await read_values(settings, settings.topics.audit)
    assert sorted((a["who"], a["action"], a["detail"]["deliveries"]) for a in audit) == [
        ("max", "held.cancel", 1), ("max", "held.send", 1)]
