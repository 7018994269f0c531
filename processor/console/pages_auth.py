"""Sign-in (password, then a TOTP code when two-factor is on), sign-out, and two-factor enrolment."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import segno
from aiohttp import web

from processor.clock import now_ms
from processor.console import auth
from processor.console.audit import audit_record
from processor.console.context import CONSOLE, Console
from processor.console.sessions import COOKIE, set_cookie
from processor.console.users import User, UserStore

routes = web.RouteTableDef()


async def form_of(request: web.Request) -> Any:
    """The form the CSRF check already read, or read it now."""
    if "form" not in request:
        request["form"] = await request.post()
    return request["form"]


def _safe_next(target: str | None) -> str:
    """Only paths of this console: never an absolute URL (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


@routes.get("/login")
async def login_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    if request["user"] is not None:
        raise web.HTTPSeeOther("/")
    response = await _with_anonymous_session(request, console)
    return response or console.render(request, "login.html", error=None, next=request.query.get("next", "/"))


async def _with_anonymous_session(request: web.Request, console: Console) -> web.Response | None:
    if request["session"] is not None:
        return None
    token, session = await console.users_call(lambda s: s.new_session(None, "anonymous", now_ms()))
    request["session"] = session
    response = console.render(request, "login.html", error=None, next=request.query.get("next", "/"))
    set_cookie(response, token)
    return response


def _limit_keys(request: web.Request, name: str) -> list[str]:
    return [f"user:{name}", f"addr:{request.remote}"]


async def _rate_limited(console: Console, keys: list[str]) -> bool:
    since = now_ms() - auth.LOGIN_WINDOW_MS

    def check(store: UserStore) -> bool:
        return not all(auth.login_allowed(store.failures(k, since), now_ms()) for k in keys)

    return await console.users_call(check)


async def _failed(console: Console, keys: list[str]) -> None:
    await console.users_call(lambda s: s.add_failure(keys, now_ms(), auth.LOGIN_WINDOW_MS))


@routes.post("/login")
async def login(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    form = await form_of(request)
    name, password = str(form.get("name", "")).strip(), str(form.get("password", ""))
    target = _safe_next(str(form.get("next", "/")))
    keys = _limit_keys(request, name)
    if await _rate_limited(console, keys):
        return console.render(request, "login.html", status=429, next=target,
                              error="too many failed sign-ins; wait five minutes and try again")
    user = await console.users_call(lambda s: s.check_password(name, password))
    if user is None:
        await _failed(console, keys)
        return console.render(request, "login.html", status=401, next=target, error="wrong name or password")
    stage = "totp" if user.totp_enabled else "signed_in"
    after = "/login/totp?next=" + quote(target, safe="/") if user.totp_enabled else target
    return await _new_session(request, console, user, stage, after)


async def _new_session(request: web.Request, console: Console, user: User, stage: str,
                       target: str) -> web.StreamResponse:
    """A fresh token at every stage of sign-in, so a token seen before sign-in is worth nothing after."""
    old = request["session"]
    token, _ = await console.users_call(lambda s: s.new_session(user.name, stage, now_ms()))
    if old is not None:
        await console.users_call(lambda s: s.end_session(old.token_hash))
    response = web.HTTPSeeOther(target)
    set_cookie(response, token)
    return response


@routes.get("/login/totp")
async def totp_page(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    session = request["session"]
    if session is None or session.stage != "totp":
        raise web.HTTPSeeOther("/login")
    return console.render(request, "totp.html", error=None, next=request.query.get("next", "/"))


@routes.post("/login/totp")
async def totp(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    session = request["session"]
    if session is None or session.stage != "totp" or not session.user:
        raise web.HTTPSeeOther("/login")
    form = await form_of(request)
    target = _safe_next(str(form.get("next", "/")))
    name = session.user
    keys = _limit_keys(request, name)
    if await _rate_limited(console, keys):
        return console.render(request, "totp.html", status=429, next=target,
                              error="too many failed codes; wait five minutes and try again")
    if not await _accept_code(console, name, str(form.get("code", "")), enable=False):
        await _failed(console, keys)
        return console.render(request, "totp.html", status=401, next=target,
                              error="wrong or already used code; wait for the next one")
    user = await console.users_call(lambda s: s.get_required(name))
    return await _new_session(request, console, user, "signed_in", target)


async def _accept_code(console: Console, name: str, code: str, *, enable: bool) -> bool:
    def check(store: UserStore) -> bool:
        secret, last_step = store.totp_secret(name)
        if secret is None:
            return False
        step = auth.verify_totp(secret, code, now_s=time.time(), last_used_step=last_step)
        return step is not None and store.use_totp_step(name, step, enable=enable)

    return await console.users_call(check)


@routes.post("/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    session = request["session"]
    await console.users_call(lambda s: s.end_session(session.token_hash))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(COOKIE, path="/")
    return response


@routes.get("/account")
async def account(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    return console.render(request, "account.html", enrol=None, error=None)


@routes.post("/account/2fa/start")
async def start_two_factor(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    user: User = request["user"]
    secret = auth.new_totp_secret()
    await console.users_call(lambda s: s.start_totp(user.name, secret))
    return console.render(request, "account.html", enrol=_enrolment(user.name, secret), error=None)


def _enrolment(name: str, secret: str) -> dict[str, str]:
    uri = auth.provisioning_uri(secret, name)
    return {"uri": uri, "secret": secret, "qr": qr_data_uri(uri)}


@routes.post("/account/2fa/confirm")
async def confirm_two_factor(request: web.Request) -> web.StreamResponse:
    console: Console = request.app[CONSOLE]
    user: User = request["user"]
    form = await form_of(request)
    if not await _accept_code(console, user.name, str(form.get("code", "")), enable=True):
        secret, _ = await console.users_call(lambda s: s.totp_secret(user.name))
        enrol = _enrolment(user.name, secret) if secret else None
        return console.render(request, "account.html", status=400, enrol=enrol,
                              error="that code does not match; scan the code again or wait for the next one")
    await console.audit.write(audit_record(who=user.name, role=user.role, action="user.enable_2fa",
                                           detail={"user": user.name, "by": "self"}))
    request["user"] = await console.users_call(lambda s: s.get_required(user.name))
    return console.render(request, "account.html", enrol=None, error=None, done="two-factor sign-in is on")


def qr_data_uri(uri: str) -> str:
    """A PNG-free QR code: segno's SVG as a data: URI (allowed by the page's img-src)."""
    return segno.make(uri, error="m").svg_data_uri(scale=4)


__all__ = ["qr_data_uri", "routes"]
