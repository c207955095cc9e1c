"""The local service stack: preference order, embedded servers, idempotency, stopping.

The embedded servers here start under a temporary state folder whatever the machine runs, so
these tests pass with or without a local PostgreSQL and Redis.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from jobplatform.embedded import (
    EmbeddedServer,
    RunAs,
    accessible_to,
    answers,
    free_port,
    pid_alive,
    port_open,
    postgres_install,
    redis_binary,
    runnable_postgres_bin,
    spawn_detached,
    start_embedded_redis,
    stop_embedded,
    wait_exit,
    wait_ready,
)
from jobplatform.errors import StackError
from jobplatform.settings import S3Settings, Settings, load_settings
from jobplatform.stack import (
    LOCAL_DATABASE_URL,
    LOCAL_REDIS_URL,
    Choice,
    Services,
    choose,
    claim_services,
    ensure_services,
    load_record,
    session_services,
    stack_status,
    stop_services,
)

_SERVICE_VARIABLES = (
    "DATABASE_URL", "REDIS_URL", "S3_ENDPOINT_URL", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
ALL = ("postgres", "redis", "s3")


def nothing_answers(host: str, port: int) -> bool:
    return False


def unconfigured(state_dir: Path, **overrides: object) -> Settings:
    return load_settings(database_url=None, redis_url=None, s3=S3Settings(endpoint_url=None),
                         jobplatform_state_dir=state_dir, **overrides)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# ---- choosing a source: no servers -------------------------------------------------------

def test_configured_urls_are_used_without_probing_or_starting(
    tmp_path: Path, clean_env: None,
) -> None:
    settings = load_settings(
        database_url="postgresql://app@db.internal:5433/app", redis_url="redis://cache:6380/2",
        s3=S3Settings(endpoint_url="http://s3.internal:9000", access_key_id="k",
                      secret_access_key="s"),
        jobplatform_state_dir=tmp_path / "state",
    )
    probed: list[tuple[str, int]] = []

    def probe(host: str, port: int) -> bool:
        probed.append((host, port))
        return True

    services = ensure_services(settings, probe=probe)

    assert (services.database_url, services.redis_url, services.s3_endpoint_url) == (
        "postgresql://app@db.internal:5433/app", "redis://cache:6380/2", "http://s3.internal:9000")
    assert (services.s3_access_key_id, services.s3_secret_access_key) == ("k", "s")
    assert services.embedded == services.started == ()
    assert probed == []
    assert not (tmp_path / "state").exists()


def test_local_ports_that_answer_come_before_embedded(tmp_path: Path, clean_env: None) -> None:
    settings = unconfigured(tmp_path)

    only_postgres = choose(settings, probe=lambda host, port: (host, port) == ("127.0.0.1", 5432))
    only_redis = choose(settings, probe=lambda host, port: (host, port) == ("127.0.0.1", 6379))

    assert only_postgres["postgres"] == Choice("postgres", "local", LOCAL_DATABASE_URL)
    assert only_postgres["redis"] == Choice("redis", "embedded", None)
    assert only_redis["redis"] == Choice("redis", "local", LOCAL_REDIS_URL)
    assert only_redis["postgres"] == Choice("postgres", "embedded", None)
    assert only_redis["s3"] == Choice("s3", "embedded", None)


def test_aws_credentials_mean_aws_rather_than_embedded_s3(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "deploy")

    assert choose(unconfigured(tmp_path), nothing_answers)["s3"] == Choice("s3", "aws", None)


def test_production_refuses_to_start_embedded_servers(tmp_path: Path, clean_env: None) -> None:
    settings = unconfigured(tmp_path, jobplatform_env="production")

    with pytest.raises(StackError, match=r"set DATABASE_URL, REDIS_URL$"):
        ensure_services(settings, probe=nothing_answers)
    assert not (tmp_path / "postgres.json").exists()


def test_only_the_services_a_command_needs_are_started(tmp_path: Path, clean_env: None) -> None:
    # PostgreSQL and Redis configured, S3 not: a writer (no log shipping) never starts one
    settings = load_settings(
        database_url="postgresql://app@db.internal:5433/app", redis_url="redis://cache:6380/2",
        s3=S3Settings(endpoint_url=None), jobplatform_state_dir=tmp_path / "state")

    services = ensure_services(settings, probe=nothing_answers, needs=("postgres", "redis"))

    assert services.embedded == services.started == ()
    assert services.s3_endpoint_url is None
    assert not (tmp_path / "state").exists()
    # in production the refusal names only what is needed and missing
    production = unconfigured(tmp_path, jobplatform_env="production")
    with pytest.raises(StackError, match=r"set REDIS_URL$"):
        ensure_services(production, probe=nothing_answers, needs=("redis",))
    with pytest.raises(ValueError, match="unknown services"):
        ensure_services(settings, probe=nothing_answers, needs=("postgresql",))


def test_a_server_that_exits_while_starting_names_its_log(tmp_path: Path) -> None:
    log = tmp_path / "logs" / "broken.log"
    pid = spawn_detached(["sh", "-c", "echo 'FATAL: no such option'; exit 3"], log,
                         cwd=tmp_path, env=dict(os.environ), watch=tmp_path)
    server = EmbeddedServer("broken", "x://", 1, pid, str(log), ("sh",))

    with pytest.raises(StackError) as caught:
        wait_ready(server, lambda: False, timeout=30)

    assert str(log) in str(caught.value)
    assert "FATAL: no such option" in str(caught.value)


def test_accessible_to_follows_every_parent(tmp_path: Path) -> None:
    stranger = RunAs("stranger", uid=os.geteuid() + 4242, gid=os.getegid() + 4242)
    shared = Path(tempfile.mkdtemp(prefix="jp-access-"))
    try:
        shared.chmod(0o755)
        (shared / "open").mkdir(mode=0o755)
        (shared / "closed").mkdir(mode=0o700)
        (shared / "closed" / "inner").mkdir(mode=0o755)

        assert accessible_to(shared / "open", stranger)
        assert not accessible_to(shared / "closed", stranger)
        assert not accessible_to(shared / "closed" / "inner", stranger)
        assert not accessible_to(shared / "open", stranger, bits=7)
    finally:
        shutil.rmtree(shared)


@pytest.mark.skipif(os.geteuid() != 0, reason="the copy is only made for root's PostgreSQL user")
@pytest.mark.skipif(importlib.util.find_spec("pgserver") is None,
                    reason="the pgserver wheel exists for Python 3.11 and 3.12 only")
def test_binaries_under_a_private_home_are_copied_where_the_user_can_run_them(
    tmp_path: Path,
) -> None:
    # Given pgserver's install under a folder only root can enter
    nobody = RunAs("nobody", 65534, 65534)
    private = tmp_path / "home"
    private.mkdir(mode=0o700)
    site = private / "site-packages"
    install = site / "pgserver" / "pginstall"
    original = postgres_install()
    for part in ("bin", "lib", "share"):
        shutil.copytree(original / part, install / part, symlinks=True)
    shutil.copytree(original.parent.parent / "pgserver.libs", site / "pgserver.libs")
    cache = Path(tempfile.mkdtemp(prefix="jp-cache-"))
    try:
        cache.chmod(0o755)
        # When the stack resolves the binaries for nobody
        bin_dir = runnable_postgres_bin(install, nobody, cache)
        # Then they are a copy outside the private folder, which nobody can run
        assert not bin_dir.is_relative_to(private)
        run = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--",
             str(bin_dir / "postgres"), "--version"],
            capture_output=True, text=True, check=False, cwd="/",
        )
        assert run.returncode == 0, run.stderr
        assert "PostgreSQL" in run.stdout
        # And a second resolution reuses the copy
        assert runnable_postgres_bin(install, nobody, cache) == bin_dir
    finally:
        shutil.rmtree(cache)


# ---- embedded servers --------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Services]]:
    """All three embedded servers under a temporary state folder, purged afterwards."""
    state = tmp_path_factory.mktemp("stack") / "state"
    with pytest.MonkeyPatch.context() as patch:
        for name in _SERVICE_VARIABLES:
            patch.delenv(name, raising=False)
        settings = unconfigured(state)
        try:
            yield settings, ensure_services(settings, probe=nothing_answers)
        finally:
            stop_services(state, purge=True)


def test_embedded_servers_start_and_serve(stack: tuple[Settings, Services]) -> None:
    from writer.db import connect, drop_database, with_database

    settings, services = stack

    assert services.embedded == services.started == ALL
    with connect(services.database_url, autocommit=True) as conn:
        assert conn.execute("SELECT current_database(), current_user").fetchone() == (
            "jobplatform", "postgres")
        conn.execute("CREATE TABLE public.kept (id int)")
    admin = with_database(services.database_url, "postgres")
    with connect(admin, autocommit=True) as conn:  # the test fixtures clone templates
        conn.execute("CREATE DATABASE jp_clone TEMPLATE jobplatform")
    drop_database(with_database(services.database_url, "jp_clone"))
    client = redis.Redis.from_url(services.redis_url.rsplit("/", 1)[0] + "/15")
    assert client.set("k", "v")
    assert client.get("k") == b"v"
    client.close()
    from jobplatform.s3 import s3_client

    s3 = s3_client(services.apply(settings))
    s3.head_bucket(Bucket=settings.s3.bucket)


def test_a_second_call_finds_them_running(stack: tuple[Settings, Services]) -> None:
    settings, first = stack
    pids = {name: _pid(settings, name) for name in ALL}

    again = ensure_services(settings, probe=nothing_answers)

    assert again.started == ()
    assert again.embedded == ALL
    assert again.environ() == first.environ()
    assert {name: _pid(settings, name) for name in ALL} == pids


def test_status_and_cli_report_the_embedded_servers(stack: tuple[Settings, Services]) -> None:
    from jobplatform.cli.stack import stack as stack_command

    settings, services = stack
    rows = stack_status(settings, probe=nothing_answers)
    assert [(r.name, r.source, r.url, r.up) for r in rows] == [
        ("postgres", "embedded", services.database_url, True),
        ("redis", "embedded", services.redis_url, True),
        ("s3", "embedded", services.s3_endpoint_url, True),
    ]

    # Postgres and Redis configured (so the machine's local servers do not matter), S3 not.
    env = {"JOBPLATFORM_STATE_DIR": str(settings.jobplatform_state_dir),
           "DATABASE_URL": services.database_url, "REDIS_URL": services.redis_url}
    runner = CliRunner()
    status = runner.invoke(stack_command, ["status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    by_name = {row["name"]: row for row in json.loads(status.output)}
    assert by_name["postgres"]["source"] == "configured"
    assert by_name["postgres"]["up"] is True
    assert by_name["s3"] == {"name": "s3", "source": "embedded", "url": services.s3_endpoint_url,
                             "up": True, "pid": _pid(settings, "s3"), "in_use": True}

    up = runner.invoke(stack_command, ["up", "--env"], env=env)
    assert up.exit_code == 0, up.output
    assert f"export S3_ENDPOINT_URL={services.s3_endpoint_url}" in up.output.splitlines()
    assert f"export DATABASE_URL={services.database_url}" in up.output.splitlines()


def test_concurrent_callers_share_one_server(tmp_path: Path) -> None:
    # Given three processes that resolve an embedded Redis at the same moment
    state = tmp_path / "state"
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from jobplatform.stack import ensure_embedded\n"
        "sys.stdin.readline()\n"
        "found, started = ensure_embedded(Path(sys.argv[1]), ('redis',))\n"
        "print(json.dumps([found['redis'].pid, list(started)]))\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(state)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        for proc in procs:  # released together, once all three have imported the stack
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.close()
        results = []
        for proc in procs:
            assert proc.stdout is not None
            results.append(json.loads(proc.stdout.read()))
            assert proc.wait(60) == 0
        # Then one of them started the server and all three use it
        assert len({pid for pid, _ in results}) == 1
        assert sorted(len(started) for _, started in results) == [0, 0, 1]
    finally:
        stop_services(state, purge=True)


def test_down_stops_only_what_the_stack_started(
    stack: tuple[Settings, Services], tmp_path: Path,
) -> None:
    from writer.db import connect

    settings, services = stack
    state = settings.jobplatform_state_dir
    # Given a Redis the stack did not start, standing in for the machine's
    port = free_port(0)
    machine = subprocess.Popen([str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1",
                                "--save", "", "--dir", str(tmp_path)],
                               stdout=subprocess.DEVNULL)
    try:
        wait_ready(EmbeddedServer("machine", "", port, machine.pid, "-", ()),
                   lambda: port_open("127.0.0.1", port), timeout=30)
        servers = [load_record(state, name) for name in ALL]

        # When the stack goes down, twice
        stopped = stop_services(state)
        second = stop_services(state)

        # Then its three servers stopped and their records are gone, the other Redis runs on
        assert sorted(s.name for s in stopped) == sorted(ALL)
        assert second == []
        for server in servers:
            assert server is not None
            assert wait_exit(server.pid, 30)
            assert not answers(server)
            assert load_record(state, server.name) is None
        assert redis.Redis(port=port).ping()
    finally:
        machine.terminate()
        machine.wait(30)

    # And a later start reuses the embedded PostgreSQL's data
    again = ensure_services(settings, probe=nothing_answers)
    assert again.started == ALL
    assert again.environ() == services.environ()  # each on its former port
    with connect(again.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.kept").fetchone() == (0,)


def test_a_session_stops_what_it_started_and_only_that(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "deploy")  # S3 from AWS: only Redis is embedded here
    state = tmp_path / "state"
    settings = unconfigured(state)
    with session_services(settings, probe=lambda host, port: port == 5432) as outer:
        # A nested session finds the servers running and leaves them be when it ends
        with session_services(settings, probe=lambda host, port: port == 5432) as inner:
            assert inner.started == ()
        redis_server = load_record(state, "redis")
        assert redis_server is not None
        assert answers(redis_server)

    assert outer.started == ("redis",)
    assert outer.database_url == LOCAL_DATABASE_URL
    assert wait_exit(redis_server.pid, 30)
    assert not pid_alive(redis_server.pid)
    assert load_record(state, "redis") is None


def test_servers_claimed_by_stack_up_outlive_the_session(
    tmp_path: Path, clean_env: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "deploy")
    state = tmp_path / "state"
    try:
        with session_services(unconfigured(state), probe=lambda host, port: port == 5432) as found:
            assert found.started == ("redis",)
            claim_services(state)  # what `jobplatform stack up` does

        record = load_record(state, "redis")
        assert record is not None
        assert answers(record)
    finally:
        stop_services(state)


def test_a_server_whose_state_folder_is_deleted_stops(tmp_path: Path) -> None:
    # Given an embedded Redis
    state = tmp_path / "state"
    server = start_embedded_redis(state)
    try:
        # When its state folder is deleted without `stack down`
        shutil.rmtree(state)
        # Then it stops by itself rather than run on where no record can find it
        assert wait_exit(server.pid, 30)
    finally:
        stop_embedded(server)


def _pid(settings: Settings, name: str) -> int:
    record = load_record(settings.jobplatform_state_dir, name)
    assert record is not None
    return record.pid
