"""The edge of `flowhook flows import`: read the export, convert, check, write, report.

Exit codes: 0 the flow file is ready to apply; 2 bad input (unreadable file), nothing usable
left (no trigger or no webhook step), or a result that needs fixing first (its problems are
printed as `flows validate` prints them; the file is written so it can be fixed).
"""

from __future__ import annotations

from pathlib import Path

import click
import orjson

from processor.cli.base import EXIT_BAD_INPUT, EXIT_OK
from processor.flows.klaviyo_import import Imported, convert, to_yaml
from processor.flows.loader import check_definition


def run_import(
    file: Path, output: Path | None, metrics: tuple[str, ...], flow_id: str | None, allow_http: bool | None
) -> int:
    """Run the command; returns its exit code."""
    try:
        data = orjson.loads(file.read_bytes())
    except (OSError, orjson.JSONDecodeError) as exc:
        click.echo(f"{file}: cannot read a Klaviyo flow export (JSON): {exc}", err=True)
        return EXIT_BAD_INPUT
    names = _metric_names(metrics)
    imported = convert(data, metric_names=names, flow_id=flow_id)
    _report(file, imported)
    if not imported.usable:
        what = "no trigger Flowhook can use" if not imported.trigger_ok else "no webhook step"
        click.echo(
            f"{file}: nothing usable to import: the flow has {what}; no flow file written", err=True
        )
        return EXIT_BAD_INPUT
    text = to_yaml(imported.definition)
    target = str(output) if output is not None else f"{file} (imported)"
    checked = check_definition(imported.definition, source=target, allow_http=allow_http)
    if output is not None:
        output.write_text(text, encoding="utf-8")
        click.echo(
            f"wrote {output} (flow {imported.definition['id']}, {imported.webhooks} webhook "
            f"step{'s' if imported.webhooks != 1 else ''})",
            err=True,
        )
    else:
        click.echo(text, nl=False)
    for problem in checked.problems:
        click.echo(click.style(f"fix before apply: {problem}", fg="red"), err=True)
    return EXIT_OK if checked.ok else EXIT_BAD_INPUT


def _metric_names(pairs: tuple[str, ...]) -> dict[str, str]:
    names = {}
    for pair in pairs:
        ident, sep, name = pair.partition("=")
        if not sep or not ident.strip() or not name.strip():
            raise click.BadParameter(
                f"{pair!r}: write --metric ID=NAME, e.g. --metric XyZ12='Placed Order'", param_hint="--metric"
            )
        names[ident.strip()] = name.strip()
    return names


def _report(file: Path, imported: Imported) -> None:
    for note in imported.notes:
        click.echo(f"{file}: {note}", err=True)
