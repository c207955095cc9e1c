"""The roster benchmark runs both paths on a small file and reports every figure."""

from __future__ import annotations

import json

from click.testing import CliRunner

from bench.roster import command


def test_bench_roster_json_reports_both_paths() -> None:
    result = CliRunner().invoke(command, ["--rows", "3000", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    # Six rows carry a landline and are invalid: 2,994 valid rows make 6 chunks of up to 500.
    assert figures["rows"] == 3000
    assert figures["chunks"] == 6
    for key in ("rows_per_s", "parse_validate_rows_per_s", "openpyxl_rows_per_s"):
        assert figures[key] > 0
    assert 0 < figures["peak_rss_mib"] < 300
