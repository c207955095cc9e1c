"""The roster benchmark runs both paths on a small file and reports every figure."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_bench_roster_compares_formats_with_a_baseline_revision() -> None:
    # Given the roster code of a revision of this checkout (HEAD: the same code, run from a
    # copy of its own) as the baseline
    result = CliRunner().invoke(command, ["--rows", "2000", "--formats", "xlsx,ods,ods-padded",
                                          "--baseline-rev", "HEAD", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)["formats"]
    # Then each format is read by both, side by side, with the ratios
    for fmt in ("xlsx", "ods"):
        assert figures[fmt]["current"]["parse_validate_rows_per_s"] > 0
        assert figures[fmt]["baseline"]["precheck_s"] > 0
        assert figures[fmt]["ratio_parse_validate"] > 0
    # and the padded .ods by the current code only (a revision before it may refuse it)
    assert set(figures["ods-padded"]) == {"current"}


def test_the_benchmarks_ods_rosters_read_as_its_xlsx_one(tmp_path: Path) -> None:
    from actors.roster import Limits, open_roster
    from bench.roster import write_file

    totals = []
    for fmt in ("xlsx", "ods", "ods-padded"):
        with open_roster(write_file(tmp_path, fmt, 600), Limits()) as roster:
            counts = roster.validate(lambda rows: None)
        totals.append((counts.total, counts.valid, counts.invalid, counts.duplicates))
    assert totals[0] == totals[1] == totals[2]
    assert totals[0][0] == 600
