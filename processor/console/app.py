"""`flowhook console`: the aiohttp application and its life cycle.

Start: open the index and the users file, start the audit producer, start the feed (it
rebuilds a missing index from the topics), then listen — on 127.0.0.1 unless told otherwise.
Stop (Ctrl-C or SIGTERM): stop listening, cancel the feed, stop the producer, close files.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from processor.console import pages_auth, pages_change, pages_held, pages_preview, pages_view
from processor.console.context import CONSOLE, Console, ConsoleConfig
from processor.console.sessions import security_headers, session_and_csrf
from processor.logs import get_logger
from processor.settings import Settings

log = get_logger(__name__)
STATIC = Path(__file__).parent / "static"


def make_app(console: Console) -> web.Application:
    app = web.Application(middlewares=[security_headers, session_and_csrf], client_max_size=1024 * 1024)
    app[CONSOLE] = console
    for routes in (pages_auth.routes, pages_view.routes, pages_change.routes, pages_preview.routes,
                   pages_held.routes):
        app.add_routes(routes)
    app.router.add_static("/static/", STATIC)
    app.cleanup_ctx.append(_parts)
    return app


async def _parts(app: web.Application) -> AsyncIterator[None]:
    console = app[CONSOLE]
    await console.audit.start()
    feed = asyncio.create_task(console.feed.run(), name="console-feed")
    feed.add_done_callback(_feed_ended)
    try:
        yield
    finally:
        feed.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feed
        await console.audit.stop()
        console.close()


def _feed_ended(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("console_feed_failed", error=repr(task.exception()))


async def serve(settings: Settings, config: ConsoleConfig) -> int:
    """Run the console until SIGINT/SIGTERM; 0 on a clean stop."""
    app = make_app(Console(settings, config))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        log.info("console_listening", url=f"http://{config.host}:{config.port}/",
                 index=str(config.index_file),
                 users=str(config.users_file))
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0
