"""The CLI tests run writers in threads, as the writer's own tests do."""

from tests.writer.conftest import start_writer

__all__ = ["start_writer"]
