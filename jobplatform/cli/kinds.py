"""``jobplatform kinds``: the kinds this process registers, and whether each can be applied."""

from __future__ import annotations

from typing import Any

import click

from jobplatform.cli._common import echo_json, settings_from_env


@click.command()
@click.option("--json", "as_json", is_flag=True, help="JSON output.")
def kinds(as_json: bool) -> None:
    """List the registered kinds (entry points and JOBPLATFORM_KINDS): their intents, lanes,
    job types and where each was registered. Exits 2 when an intent kind has no handler."""
    from jobplatform.kinds import registry_for

    settings = settings_from_env()
    registry = registry_for(settings)
    listed: list[dict[str, Any]] = []
    for kind in registry.kinds:
        listed.append({
            "name": kind.name,
            "registered": registry.origins.get(kind.name, "in code"),
            "handler": kind.apply is not None or kind.handler is not None,
            "intents": [{"kind": m.model_fields["kind"].default, "lane": m.lane}
                        for m in kind.intents],
            "jobs": [{"kind": job.kind, "actor": job.actor,
                      "queue": job.queue_name(settings)} for job in kind.jobs],
        })
    if as_json:
        echo_json({"kinds": listed, "missing_handlers": registry.missing_handlers()})
    else:
        for entry in listed:
            click.echo(f"{entry['name']}  ({entry['registered']})"
                       f"{'' if entry['handler'] else '  NO HANDLER'}")
            for intent in entry["intents"]:
                click.echo(f"  intent {intent['kind']:<24} lane {intent['lane']}")
            for job in entry["jobs"]:
                click.echo(f"  job    {job['kind']:<24} actor {job['actor']}, "
                           f"queue {job['queue']}")
    if registry.missing_handlers():
        raise SystemExit(2)
