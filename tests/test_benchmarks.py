"""The overhead benchmark, whose figures the README and docs/performance.md quote: it runs end to end, its
tables stay readable, and the ratios it saves and pools are the ones it measured."""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys

from conftest import REPO, child_env

OVERHEAD = REPO / "benchmarks" / "overhead.py"


def overhead(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(OVERHEAD), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env=child_env(OMP_NUM_THREADS="2"))


def test_overhead_benchmark_saves_the_ratios_it_prints_and_pools_passes(tmp_path):
    saved = tmp_path / "pass.json"
    out = overhead("--batch-sizes", "32", "--paths", "memory,map", "--steps", "30", "--repeats", "2",
                   "--pairs", "3", "--chunk-steps", "10", "--output-dir", str(tmp_path / "runs"),
                   "--save", str(saved))
    assert out.returncode == 0, out.stderr
    # The tool's own lines and progress bar go to runs.log, not into the tables.
    assert "scaling:" not in out.stdout
    assert "scaling: completed after 30 steps" in (tmp_path / "runs" / "runs.log").read_text()

    data = json.loads(saved.read_text())
    assert [(case["path"], case["batch"]) for case in data["whole_runs"]] == [("memory", 32), ("map", 32)]
    for case in data["whole_runs"]:
        # each tool run against the geometric mean of the bare loops before and after it
        assert len(case["tool"]) == 2 and len(case["bare"]) == 3
        expected = [tool / math.sqrt(before * after)
                    for tool, before, after in zip(case["tool"], case["bare"], case["bare"][1:], strict=False)]
        assert case["ratio"] == expected
        assert all(0.2 < ratio < 5 for ratio in case["ratio"])
    rows = [line.split() for line in out.stdout.splitlines() if line.split()[:2] in (["memory", "32"], ["map", "32"])]
    assert len(rows) == 4  # two cases, two instruments
    for case, row in zip(data["whole_runs"], rows[:2], strict=True):  # path batch steps bare/s tool/s tool/bare
        assert float(row[5]) == round(statistics.median(case["ratio"]), 3)
    for case, row in zip(data["in_process"], rows[2:], strict=True):  # path batch tool/bare
        assert float(row[2]) == round(statistics.median(case["ratio"]), 3)
    assert [len(case["ratio"]) for case in data["in_process"]] == [3, 3]

    pooled = overhead("--pool", str(saved), str(saved))
    assert pooled.returncode == 0, pooled.stderr
    lines = {tuple(line.split()[:3]): line for line in pooled.stdout.splitlines()}
    whole = data["whole_runs"][0]["ratio"]
    # the memory case's whole runs, twice over: 4 ratios, their median, and each pass's median beside it
    row = lines[("memory", "32", "4")].split()
    assert float(row[3]) == round(statistics.median(whole + whole), 3)
    assert row[-2:] == [f"{statistics.median(whole):.3f}"] * 2
    assert ("map", "32", "6") in lines  # the in-process pairs, 3 per pass


def test_overhead_benchmark_pool_refuses_a_file_it_did_not_save(tmp_path):
    other = tmp_path / "other.json"
    other.write_text('{"whole_runs": [{"path": "memory"}]}')
    for file in (other, tmp_path / "missing.json"):
        out = overhead("--pool", str(file))
        assert out.returncode == 2
        assert f"--pool: {file} is not a pass saved by --save" in out.stderr.splitlines()[-1]
        assert "Traceback" not in out.stderr
