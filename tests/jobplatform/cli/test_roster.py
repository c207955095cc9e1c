"""``jobplatform roster check``, run as support staff would: in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.actors import roster_corpus as corpus


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobplatform", "roster", "check", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )


def test_check_json_lists_counts_and_rejected_rows(tmp_path: Path) -> None:
    done = check(str(corpus.write_messy_xlsx(tmp_path)), "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["total"], result["valid"], result["invalid"], result["duplicates"]) == (
        7, 5, 2, 1
    )
    assert result["errors"][0] == {"row": 9, "column": "학생 이름", "reason": "name is missing"}
    assert [(e["row"], e["column"]) for e in result["errors"][1:]] == [
        (10, "휴대폰 번호"), (10, "학년"), (10, "생일")
    ]


def test_check_text_output(tmp_path: Path) -> None:
    done = check(str(corpus.write_messy_xlsx(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "sheet '학생 명단', header on row 3" in done.stdout
    assert "total 7, valid 5, invalid 2, duplicates 1" in done.stdout
    assert "row 10, 학년: no such grade ('고4')" in done.stdout


def test_check_rejected_file_exits_2(tmp_path: Path) -> None:
    done = check(str(corpus.write_lying_bomb_xlsx(tmp_path)), "--json")
    assert done.returncode == 2
    assert "zip bomb" in json.loads(done.stdout)["error"]
    done = check(str(corpus.write_empty(tmp_path)))
    assert done.returncode == 2
    assert "the file is empty" in done.stderr
