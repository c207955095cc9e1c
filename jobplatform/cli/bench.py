"""``jobplatform bench NAME``: benchmarks, one module each under ``bench/``.

Each ``bench/<name>.py`` exposes a click command named ``command``; it is imported only when
run, since benchmarks compose the whole platform (and their baselines talk to PostgreSQL).
``bench/`` is not part of the installed package: benchmarks run from a checkout, whose root is
put first on ``sys.path`` so that no other package named ``bench`` is picked up instead.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from types import ModuleType

import click

from jobplatform.settings import PROJECT_ROOT, running_from_checkout

FROM_CHECKOUT = (
    "benchmarks run from a checkout of the repository (bench/ is not installed with the"
    " package): clone it, then run `make lint` once and `.venv/bin/jobplatform bench NAME`"
)


def bench_package() -> ModuleType:
    """The checkout's ``bench`` package; a clear error from an installed package."""
    folder = PROJECT_ROOT / "bench"
    if not running_from_checkout() or not (folder / "__init__.py").is_file():
        raise click.UsageError(FROM_CHECKOUT)
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    package = importlib.import_module("bench")
    if not str(getattr(package, "__file__", "") or "").startswith(str(folder)):
        raise click.UsageError(
            f"`import bench` found {package.__file__ or package.__path__}, not {folder}: another"
            " package named bench shadows the checkout's benchmarks")
    return package


class _LazyBenchGroup(click.Group):
    """A benchmark named after a Python keyword lives in a module with a trailing underscore
    (``bench import`` is ``bench/import_.py``)."""

    def _modules(self) -> dict[str, str]:
        return {
            m.name.removesuffix("_"): m.name
            for m in pkgutil.iter_modules(bench_package().__path__)
            if not m.name.startswith("_")
        }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._modules())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        name = self._modules().get(cmd_name)
        if name is None:
            return None
        module = importlib.import_module(f"bench.{name}")
        command = getattr(module, "command", None)
        return command if isinstance(command, click.Command) else None


@click.group(cls=_LazyBenchGroup, invoke_without_command=True)
@click.pass_context
def bench(ctx: click.Context) -> None:
    """Benchmarks, side by side with their baselines in one run (from a checkout only)."""
    if ctx.invoked_subcommand is None:
        bench_package()
        click.echo(ctx.get_help())
