"""``jobplatform doctor``: check a deployment against the incident's arithmetic and traps."""

from __future__ import annotations

import sys

import click

from jobplatform.cli._common import echo_json, settings_from_env


@click.command()
@click.option("--writers", type=click.IntRange(min=1), default=2, show_default=True,
              help="Writer processes of the formation (active and standbys).")
@click.option("--other-connections", "others", type=click.IntRange(min=0), default=0,
              show_default=True,
              help="Connections of everything else using the database (API servers, ...).")
@click.option("--skip-s3", is_flag=True, help="Leave out the S3 permission check.")
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
def doctor(writers: int, others: int, skip_s3: bool, as_json: bool) -> None:
    """Connections vs max_connections, poolers, Redis persistence, S3 access, clock skew.

    Each finding is ok, warn or fail, with its fix; the exit code is 1 when one fails.
    """
    import redis

    from jobplatform.doctor import Finding, check_clocks, check_redis, check_s3
    from jobplatform.stack import ensure_services
    from writer.doctor import check_database, database_clock

    settings = settings_from_env()
    settings = ensure_services(settings).apply(settings)
    assert settings.database_url is not None
    assert settings.redis_url is not None
    findings: list[Finding] = check_database(settings.database_url, writers=writers,
                                             others=others,
                                             fast_connection=settings.writer.fast_connection)
    client = redis.Redis.from_url(settings.redis_url)
    try:
        findings += check_redis(client)
        findings += check_clocks(client, settings.broker_namespace,
                                 database_now=database_clock(settings.database_url))
    finally:
        client.close()
    if not skip_s3:
        findings += check_s3(settings)
    if as_json:
        echo_json([f.as_dict() for f in findings])
    else:
        for f in findings:
            click.echo(f"{f.status.upper():4}  {f.check}: {f.detail}")
            if f.fix:
                click.echo(f"      fix: {f.fix}")
    if any(f.status == "fail" for f in findings):
        sys.exit(1)
