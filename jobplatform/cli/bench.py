"""``jobplatform bench NAME``: benchmarks, one module each under ``bench/``.

Each ``bench/<name>.py`` exposes a click command named ``command``; it is imported only when
run, since benchmarks compose the whole platform (and their baselines talk to PostgreSQL).
"""

from __future__ import annotations

import importlib
import pkgutil

import click


class _LazyBenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        import bench

        return sorted(
            m.name for m in pkgutil.iter_modules(bench.__path__)
            if not m.name.startswith("_")
        )

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.list_commands(ctx):
            return None
        module = importlib.import_module(f"bench.{cmd_name}")
        command = getattr(module, "command", None)
        return command if isinstance(command, click.Command) else None


@click.group(cls=_LazyBenchGroup)
def bench() -> None:
    """Benchmarks, side by side with their baselines in one run."""
