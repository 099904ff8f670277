"""The result schema has one owner (scaling.results.Result): a real run's result.json has exactly its fields,
docs/results.md describes each of them, and the report reads the file. Schema drift fails here."""

from __future__ import annotations

import re
import typing

import pytest

from conftest import REPO, SMALL, assert_ok, load_result, run_entry
from scaling.report import write_report
from scaling.results import OPTIONAL_FIELDS, FailureResult, Result

DOC = (REPO / "docs" / "results.md").read_text()


def documented(field: str) -> bool:
    return re.search(rf"`{re.escape(field)}`", DOC) is not None


def test_every_schema_field_is_documented():
    fields = set(typing.get_type_hints(Result)) | set(typing.get_type_hints(FailureResult))
    missing = sorted(field for field in fields if not documented(field))
    assert not missing, f"docs/results.md does not describe {missing}"


@pytest.mark.slow
def test_a_real_result_has_exactly_the_schema_fields_and_the_report_reads_it(tmp_path):
    run_dir = tmp_path / "study" / "runs" / "bs128"
    assert_ok(run_entry([*SMALL, "--global-bs", "128", "--max-steps", "150", "--target-accuracy", "0.3",
                         "--output-dir", str(run_dir)]))
    result = load_result(run_dir)
    assert set(result) == set(typing.get_type_hints(Result)) - OPTIONAL_FIELDS
    assert result["status"] == "reached"
    paths = write_report(tmp_path / "study")
    report = paths["report.md"].read_text()
    assert "runs/bs128" in report and "reached" in report


@pytest.mark.slow
def test_a_failure_result_has_exactly_the_failure_fields(tmp_path):
    proc = run_entry([*SMALL, "--global-bs", "1024", "--per-device-bs", "1024", "--memory-cap-mb", "3",
                      "--output-dir", str(tmp_path)])
    assert proc.returncode == 1
    result = load_result(tmp_path)
    assert result["status"] == "oom"
    assert set(result) == set(typing.get_type_hints(FailureResult))
