"""Sessions by cookie, CSRF on every state-changing request, and the response headers that go with them.

The cookie holds only a random token (`Secure; HttpOnly; SameSite=Strict`; Chromium keeps
Secure cookies on http://127.0.0.1 too); the shared users file keeps its SHA-256 with the
user, the sign-in stage and the session's CSRF token. Even the sign-in form has a session
(an anonymous one), so the same rule covers every POST: its `csrf` form field (or
`X-CSRF-Token` header) must equal the session's token, and an `Origin` header, when sent,
must be this console's own.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web

from processor.clock import now_ms
from processor.console.context import CONSOLE, Console
from processor.console.users import Session

COOKIE = "flowhook_session"
PUBLIC_PREFIXES = ("/login", "/static/", "/healthz")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
SECURITY_HEADERS = {
    # No script at all: the console is plain HTML forms.
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self' data:; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def set_cookie(response: web.StreamResponse, token: str) -> None:
    response.set_cookie(COOKIE, token, secure=True, httponly=True, samesite="Strict", path="/")


async def current_session(request: web.Request) -> Session | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    console = request.app[CONSOLE]
    return await console.users_call(lambda store: store.session(token, now_ms()))


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
        _add_headers(response)
        raise
    _add_headers(response)
    return response


def _add_headers(response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


@web.middleware
async def session_and_csrf(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Load the session; refuse unsafe requests without a matching CSRF token; send others to sign in."""
    console: Console = request.app[CONSOLE]
    session = await current_session(request)
    request["session"] = session
    request["user"] = None
    if session is not None and session.stage == "signed_in" and session.user:
        name = session.user
        request["user"] = await console.users_call(lambda store: store.get(name))
    if request.method in UNSAFE_METHODS:
        await check_csrf(request, session)
    public = request.path.startswith(PUBLIC_PREFIXES)
    if request["user"] is None and not public:
        if request.method in UNSAFE_METHODS:
            raise web.HTTPUnauthorized(text="sign in first")
        raise web.HTTPSeeOther(f"/login?next={request.path_qs}" if request.path != "/" else "/login")
    return await handler(request)


async def check_csrf(request: web.Request, session: Session | None) -> None:
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        raise web.HTTPForbidden(text="cross-origin request refused")
    sent = request.headers.get("X-CSRF-Token")
    if sent is None and request.content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        form = await request.post()
        request["form"] = form
        value = form.get("csrf")
        sent = value if isinstance(value, str) else None
    if session is None or not sent or not hmac.compare_digest(sent, session.csrf):
        raise web.HTTPForbidden(text="CSRF token missing or wrong: reload the page and try again")
