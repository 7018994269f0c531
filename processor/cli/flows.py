"""`flowhook flows validate|apply|list|delete` and `flowhook preview`.

Exit codes: 0 ok, 1 failure (e.g. no broker), 2 bad input (every problem printed as
file:line: field: message).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from processor.cli.base import EXIT_BAD_INPUT, brokers_option, load_settings, run_kafka
from processor.cli.flows_import import run_import
from processor.engine.preview import preview as walk
from processor.engine.preview import read_record_file
from processor.errors import FlowhookError, InputError, Problem, warning_line
from processor.flows.loader import FLOW_SUFFIXES, CheckedFile, check_flow_file, flow_from_dict
from processor.ops import publish


def expand_paths(paths: tuple[Path, ...]) -> list[Path]:
    """Files as given, and the flow files (*.yaml, *.yml, *.json) inside given folders."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix.lower() in FLOW_SUFFIXES and p.is_file())
        else:
            found.append(path)
    return found


def check_files(paths: tuple[Path, ...], allow_http: bool | None) -> list[CheckedFile]:
    """Check every file; flow ids used by two files are a problem too."""
    checked = [check_flow_file(p, allow_http=allow_http) for p in expand_paths(paths)]
    if not checked:
        raise click.UsageError("no flow files (*.yaml, *.yml, *.json) in the given paths")
    owners: dict[str, str] = {}
    for item in checked:
        if item.flow is None:
            continue
        first = owners.setdefault(item.flow.id, item.path)
        if first != item.path:
            message = f"flow id {item.flow.id!r} is also used by {first}; flow ids must be unique"
            item.problems.append(Problem(item.path, 1, "id", message))
            item.flow = None
    return checked


def report(checked: list[CheckedFile], *, quiet_ok: bool = False) -> bool:
    """Print problems and warnings; True when every file is fine."""
    for item in checked:
        for warning in item.warnings:
            click.echo(warning_line(warning))
        for problem in item.problems:
            click.echo(click.style(str(problem), fg="red"))
        if item.ok and not quiet_ok and item.flow is not None:
            click.echo(f"ok {item.path} (flow {item.flow.id}, {item.flow.status})")
    bad = [c for c in checked if not c.ok]
    problems = sum(len(c.problems) for c in bad)
    if bad:
        click.echo(f"{len(bad)} of {len(checked)} files have problems ({problems} in all)", err=True)
    return not bad


http_option = click.option(
    "--allow-http/--https-only", default=None,
    help="Allow http:// URLs in flows (default: env FLOWHOOK_ALLOW_HTTP).",
)


@click.group()
def flows() -> None:
    """Check, publish and show flow definitions."""


# How long `flows apply` lets the processors read new definitions before asking them.
REFUSAL_WAIT_S = 2.0


@flows.command("validate")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@http_option
def validate(paths: tuple[Path, ...], allow_http: bool | None) -> None:
    """Check flow files (or folders of them); list every problem as file:line: field: message."""
    if not report(check_files(paths, allow_http)):
        sys.exit(EXIT_BAD_INPUT)


@flows.command("apply")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@http_option
@brokers_option
def apply_command(paths: tuple[Path, ...], allow_http: bool | None, brokers: str | None) -> None:
    """Validate, then publish changed flows to the flows topic (new version per change)."""
    checked = check_files(paths, allow_http)
    if not report(checked, quiet_ok=True):
        click.echo("nothing was published", err=True)
        sys.exit(EXIT_BAD_INPUT)
    settings = load_settings(brokers=brokers)

    async def run() -> int:
        changes = await publish.apply(settings, checked)
        for change in changes:
            click.echo(f"{change.kind:9} {change.flow_id} version {change.version} ({change.source})")
        return await _report_refusals([c.flow_id for c in changes])

    sys.exit(run_kafka(settings, run()))


async def _report_refusals(flow_ids: list[str]) -> int:
    """With FLOWHOOK_PROCESSOR_ENDPOINTS set: give the processors a moment to read the flows,
    then say (exit 1) which of the applied ones a processor refuses to run."""
    from processor.ops.fleet import endpoints_from_env, refusals  # heavy (aiohttp): only when applying

    endpoints = endpoints_from_env()
    if not endpoints or not flow_ids:
        return 0
    await asyncio.sleep(REFUSAL_WAIT_S)
    refused = {f: by for f, by in (await refusals(endpoints)).items() if f in flow_ids}
    for flow_id, by in sorted(refused.items()):
        for endpoint, reason in sorted(by.items()):
            click.echo(f"warning: {flow_id} was published, but the processor at {endpoint} refuses it: "
                       f"{reason}", err=True)
    return 1 if refused else 0


@flows.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Write the flow file here (default: print it).")
@click.option("--metric", "metrics", multiple=True, metavar="ID=NAME",
              help="The metric name of a Klaviyo metric id (repeatable): --metric XyZ12='Placed Order'.")
@click.option("--id", "flow_id", default=None,
              help="The Flowhook flow id (default: klaviyo-<Klaviyo flow id>).")
@http_option
def import_command(file: Path, output: Path | None, metrics: tuple[str, ...], flow_id: str | None,
                   allow_http: bool | None) -> None:
    """Turn a flow definition exported from Klaviyo's API into a Flowhook flow file.

    Prints what was skipped or could not be imported; exit 2 when nothing usable remains
    (no trigger or no webhook step) or the result needs fixing before `flows apply`.
    """
    sys.exit(run_import(file, output, metrics, flow_id, allow_http))


@flows.command("list")
@brokers_option
def list_command(brokers: str | None) -> None:
    """Show the flows on the flows topic: id, name, status, trigger, version, steps."""
    settings = load_settings(brokers=brokers)

    async def run() -> int:
        from processor.ops.fleet import endpoints_from_env, refusals  # heavy (aiohttp): only when listing

        current = await publish.current_records(settings)
        rows = [publish.flow_row(r, _flow_or_none(r)) for _, r in sorted(current.items())]
        refused = await refusals(endpoints_from_env())
        for row in rows:  # a flow a running processor will not run must not look live
            if row["id"] in refused:
                by = refused[row["id"]]
                row["status"] += f" — refused by {', '.join(sorted(by))}: {next(iter(by.values()))}"
        _print_table(rows)
        return 0

    sys.exit(run_kafka(settings, run()))


@flows.command("delete")
@click.argument("flow_id")
@brokers_option
def delete_command(flow_id: str, brokers: str | None) -> None:
    """Remove a flow (publishes a tombstone); its running runs stop at their next step."""
    settings = load_settings(brokers=brokers)

    async def run() -> int:
        if not await publish.delete(settings, flow_id):
            click.echo(f"no flow {flow_id!r} on {settings.topics.flows}", err=True)
            return 1
        click.echo(f"deleted {flow_id}")
        return 0

    sys.exit(run_kafka(settings, run()))


def _flow_or_none(record: dict[str, Any]) -> Any:
    try:
        return flow_from_dict(record.get("definition"), source=str(record.get("source")),
                              version=int(record.get("version", 1)), allow_http=True)
    except (FlowhookError, ValueError, TypeError):
        return None


def _print_table(rows: list[dict[str, str]]) -> None:
    table = Table(title=f"{len(rows)} flow{'' if len(rows) == 1 else 's'}")
    for column in ("id", "name", "status", "trigger", "version", "steps"):
        table.add_column(column, justify="right" if column == "version" else "left",
                         overflow="fold")
    for row in rows:
        table.add_row(*(row[c] for c in ("id", "name", "status", "trigger", "version", "steps")))
    Console().print(table)


@click.command()
@click.argument("flow_file", type=click.Path(path_type=Path))
@click.option("--event", "event_file", required=True, type=click.Path(path_type=Path),
              help="The triggering event (JSON, as on the events topic).")
@click.option("--profile", "profile_file", default=None, type=click.Path(path_type=Path),
              help="The stored profile (JSON); the event's own profile fields are merged over it.")
@http_option
def preview(flow_file: Path, event_file: Path, profile_file: Path | None, allow_http: bool | None) -> None:
    """Render the requests a flow would send for one event, sending nothing."""
    checked = check_flow_file(flow_file, allow_http=True if allow_http is None else allow_http)
    try:
        if checked.flow is None:
            raise InputError(checked.problems)
        profile = read_record_file(profile_file, "profile") if profile_file else None
        event = read_record_file(event_file, "event", profile=profile)
    except InputError as exc:
        for problem in exc.problems:
            click.echo(click.style(str(problem), fg="red"), err=True)
        sys.exit(EXIT_BAD_INPUT)
    for warning in checked.warnings:
        click.echo(warning_line(warning))
    shown = walk(checked.flow, event, profile)
    for line in shown.lines:
        click.echo(line)
    invalid = [label for label, request in shown.requests if request.error is not None]
    if invalid:  # the flow's fault, so bad input: a script checking flows must see it
        click.echo(f"error: {len(invalid)} request(s) would be recorded as `invalid`: {', '.join(invalid)}",
                   err=True)
        sys.exit(EXIT_BAD_INPUT)
