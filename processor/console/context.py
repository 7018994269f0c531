"""What every console page needs: settings, the index, the users file, the audit log, templates."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import jinja2
from aiohttp import web

from processor import __version__
from processor import constants as c
from processor.clock import iso
from processor.console.audit import AuditLog
from processor.console.feed import Feed, open_runner
from processor.console.profiles import parse_endpoints
from processor.console.users import UserStore
from processor.settings import Settings

T = TypeVar("T")
DEFAULT_PORT = 8400
DEFAULT_RETENTION_MS = c.TOPIC_RETENTION_MS[c.RESULTS]  # what the results topic keeps


@dataclass(frozen=True)
class ConsoleConfig:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    folder: Path = Path(".flowhook-data/console")
    index_path: Path | None = None
    users_path: Path | None = None
    endpoints: tuple[str, ...] = ()
    endpoint_token: str | None = field(default=None, repr=False)
    retention_ms: int = DEFAULT_RETENTION_MS

    @property
    def index_file(self) -> Path:
        return self.index_path or self.folder / f"index-{self.port}.sqlite"

    @property
    def users_file(self) -> Path:
        return self.users_path or self.folder / "users.sqlite"


def users_file(settings: Settings, env: dict[str, str] | None = None) -> Path:
    """Where the shared users file is: FLOWHOOK_CONSOLE_USERS, else in the data folder."""
    env = dict(os.environ) if env is None else env
    given = env.get("FLOWHOOK_CONSOLE_USERS")
    return Path(given) if given else settings.data_dir / "console" / "users.sqlite"


def config_from_env(settings: Settings, *, host: str, port: int, index_path: Path | None,
                    retention_ms: int) -> ConsoleConfig:
    return ConsoleConfig(
        host=host, port=port, folder=settings.data_dir / "console", index_path=index_path,
        users_path=users_file(settings),
        endpoints=parse_endpoints(os.environ.get("FLOWHOOK_PROCESSOR_ENDPOINTS")),
        endpoint_token=os.environ.get("FLOWHOOK_ENDPOINT_TOKEN"), retention_ms=retention_ms)


def make_templates() -> jinja2.Environment:
    templates = jinja2.Environment(
        loader=jinja2.PackageLoader("processor.console", "templates"),
        autoescape=True,  # every value is escaped: flow names and excerpts may hold <script>
        undefined=jinja2.StrictUndefined,
    )
    templates.filters["iso"] = lambda ms: iso(ms) if isinstance(ms, int) else ""
    templates.filters["pct"] = lambda x: "–" if x is None else f"{x * 100:.1f}%"
    return templates


class Console:
    """One console process's parts. The users file is used from one thread of its own."""

    def __init__(self, settings: Settings, config: ConsoleConfig) -> None:
        self.settings = settings
        self.config = config
        self.index = open_runner(config.index_file)
        self.feed = Feed(settings, self.index, retention_ms=config.retention_ms)
        self.audit = AuditLog(settings)
        self._users_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="users")
        self.users = UserStore(config.users_file)
        self.templates = make_templates()

    async def users_call(self, func: Callable[[UserStore], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._users_thread, func, self.users)

    async def found(self, what: str, func: Callable[..., T | None], *args: Any) -> T:
        """An index read that must find something: 404 naming `what` otherwise."""
        value = await self.index.read(func, *args)
        if value is None:
            raise web.HTTPNotFound(text=f"no such {what} in this console's index")
        return value

    def render(self, request: web.Request, name: str, status: int = 200, **values: Any) -> web.Response:
        session = request.get("session")
        page = self.templates.get_template(name).render(
            user=request.get("user"), csrf=session.csrf if session else "", version=__version__,
            path=request.path, **values)
        return web.Response(text=page, status=status, content_type="text/html", charset="utf-8")

    def close(self) -> None:
        self.index.close()
        self._users_thread.shutdown(wait=True)
        self.users.close()


CONSOLE: web.AppKey[Console] = web.AppKey("console", Console)
