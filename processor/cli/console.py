"""`flowhook console [--port 8400]`, `flowhook console users ...` and `flowhook console bench`.

User commands change the shared users file and write an audit record for each change
(`who` is `cli:<login name>`); a change is made only once its audit record is on the topic.
"""

from __future__ import annotations

import getpass
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from processor.cli.base import brokers_option, load_settings, run_kafka
from processor.clock import now_ms
from processor.console import auth
from processor.console.audit import audit_record, write_once
from processor.console.auth import ROLES
from processor.console.users import UserError, UserStore
from processor.durations import DurationError, parse_duration_ms


@click.group(invoke_without_command=True)
@click.option("--port", default=8400, show_default=True, help="Port to listen on.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (loopback unless you put a TLS proxy in front).")
@click.option("--index", "index_path", type=click.Path(path_type=Path), default=None,
              help="The index file (default: <data dir>/console/index-PORT.sqlite, one per console).")
@click.option("--retention", default="30d", show_default=True,
              help="Forget deliveries older than this (the results topic's retention.ms, 30d by default).")
@brokers_option
@click.pass_context
def console(ctx: click.Context, port: int, host: str, index_path: Path | None, retention: str,
            brokers: str | None) -> None:
    """The web console: flows, activity logs, failures, replay, preview, status and publishing."""
    if ctx.invoked_subcommand is not None:
        return
    # heavy (aiohttp, jinja2, the engine for previews): only the server needs them
    from processor.console.app import serve
    from processor.console.context import config_from_env

    settings = load_settings(brokers=brokers)
    try:
        retention_ms = parse_duration_ms(retention)
    except DurationError as exc:
        raise click.UsageError(f"--retention: {exc}") from None
    config = config_from_env(settings, host=host, port=port, index_path=index_path, retention_ms=retention_ms)
    click.echo(f"console on http://{host}:{port}/ (Ctrl-C stops it)", err=True)
    sys.exit(run_kafka(settings, serve(settings, config)))


@console.group()
def users() -> None:
    """Console users: add, list, set-role, set-password, remove, enable-2fa, disable-2fa."""


def _store_and_settings(brokers: str | None) -> tuple[Any, Any]:
    from processor.console.context import users_file  # heavy (aiohttp): the console's web context

    settings = load_settings(brokers=brokers)
    return UserStore(users_file(settings)), settings


def _audited(settings: Any, action: str, user: str, change: Callable[[], Any], **detail: Any) -> Any:
    """Write the audit record, then make the change (an unauditable change is not made)."""
    record = audit_record(who=f"cli:{getpass.getuser()}", role=None, action=action,
                          detail={"user": user, **detail})
    run_kafka(settings, write_once(settings, record))
    return change()


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("password", hide_input=True, confirmation_prompt=True))


stdin_option = click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")


@users.command("add")
@click.argument("name")
@click.option("--role", type=click.Choice(list(reversed(ROLES))), required=True)
@stdin_option
@brokers_option
def add(name: str, role: str, password_stdin: bool, brokers: str | None) -> None:
    """Add a user with a role; the password is asked for (or read from stdin)."""
    store, settings = _store_and_settings(brokers)
    password = _password(password_stdin)
    if store.get(name) is not None:
        raise UserError(f"user {name!r} exists already; use set-role or set-password")
    _audited(settings, "user.add", name, lambda: store.add(name, role, password, now_ms()), role=role)
    click.echo(f"added {name} ({role}); they can enable two-factor sign-in on their account page")


@users.command("list")
def list_users() -> None:
    """Name, role and two-factor state of every user."""
    store, _ = _store_and_settings(None)
    for user in store.list():
        state = "on" if user.totp_enabled else ("pending" if user.has_pending_totp else "off")
        click.echo(f"{user.name}\t{user.role}\ttwo-factor {state}")


@users.command("set-role")
@click.argument("name")
@click.argument("role", type=click.Choice(list(reversed(ROLES))))
@brokers_option
def set_role(name: str, role: str, brokers: str | None) -> None:
    """Change a user's role (their sessions end)."""
    store, settings = _store_and_settings(brokers)
    before = store.get_required(name).role
    _audited(settings, "user.set_role", name, lambda: store.set_role(name, role),
             **{"from": before, "to": role})
    click.echo(f"{name}: {before} -> {role}")


@users.command("set-password")
@click.argument("name")
@stdin_option
@brokers_option
def set_password(name: str, password_stdin: bool, brokers: str | None) -> None:
    """Set a new password (their sessions end)."""
    store, settings = _store_and_settings(brokers)
    store.get_required(name)
    password = _password(password_stdin)
    _audited(settings, "user.set_password", name, lambda: store.set_password(name, password))
    click.echo(f"{name}: password changed")


@users.command("remove")
@click.argument("name")
@brokers_option
def remove(name: str, brokers: str | None) -> None:
    """Remove a user (their sessions end)."""
    store, settings = _store_and_settings(brokers)
    store.get_required(name)
    _audited(settings, "user.remove", name, lambda: store.remove(name))
    click.echo(f"removed {name}")


@users.command("enable-2fa")
@click.argument("name")
@brokers_option
def enable_2fa(name: str, brokers: str | None) -> None:
    """Enrol a TOTP app: shows the QR code and secret, then asks for a code from the app."""
    import segno  # only enrolment draws a QR code

    store, settings = _store_and_settings(brokers)
    store.get_required(name)
    secret = auth.new_totp_secret()
    uri = auth.provisioning_uri(secret, name)
    store.start_totp(name, secret)
    segno.make(uri, error="m").terminal(compact=True)
    click.echo(f"{uri}\nsecret: {secret}")
    code = click.prompt("code from the app")
    step = auth.verify_totp(secret, code, now_s=time.time(), last_used_step=None)
    if step is None:
        raise click.ClickException("that code does not match; run enable-2fa again")
    _audited(settings, "user.enable_2fa", name, lambda: store.use_totp_step(name, step, enable=True),
             by="cli")
    click.echo(f"{name}: two-factor sign-in on")


@users.command("disable-2fa")
@click.argument("name")
@brokers_option
def disable_2fa(name: str, brokers: str | None) -> None:
    """Turn two-factor off (a lost phone); the user can enrol again after signing in."""
    store, settings = _store_and_settings(brokers)
    store.get_required(name)
    _audited(settings, "user.disable_2fa", name, lambda: store.disable_totp(name))
    click.echo(f"{name}: two-factor sign-in off")


@console.command("bench")
@click.option("--deliveries", default=100_000, show_default=True,
              help="Deliveries to put in a scratch index.")
@click.option("--attempts", default=2, show_default=True, help="Attempts per delivery.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
def bench(deliveries: int, attempts: int, as_json: bool) -> None:
    """Time the activity log, failures and flows pages over a scratch index of N deliveries."""
    from processor.bench.console import run_bench  # heavy (aiohttp, jinja2): the console's pages

    sys.exit(run_bench(deliveries, attempts, as_json=as_json))
