"""The CLI's one exit path: errors become a message with their causes and an exit code."""

from __future__ import annotations

import subprocess
import sys


def _jobplatform(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "jobplatform", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def test_an_unreachable_database_is_one_readable_line_not_a_traceback() -> None:
    done = _jobplatform("db", "upgrade", "--database-url",
                        "postgresql://postgres@127.0.0.1:1/jp_nowhere?connect_timeout=2")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "error: OperationalError" in done.stderr
    assert "127.0.0.1" in done.stderr


def test_a_bad_setting_exits_2_naming_the_variable() -> None:
    done = subprocess.run([sys.executable, "-m", "jobplatform", "db", "upgrade"],
                          capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "WRITER_BATCH_MAX_ROWS": "lots"})
    assert done.returncode == 2
    assert "WRITER_BATCH_MAX_ROWS" in done.stderr
