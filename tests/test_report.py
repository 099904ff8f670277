"""The study report on fabricated results (no training): tables, plots, regimes, seeds, conclusions."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from scaling.config import ConfigError, RunConfig
from scaling.report import write_report
from scaling.report.questions import largest, seeds

BATCHES = [32, 64, 128, 256, 512, 1024]
# Steps to target per LR rule: perfect scaling (r ~ 0.52) up to 256, then doubling saves under 10% (r ~ 0.95).
STEPS = {
    "linear": {32: 3200, 64: 1640, 128: 860, 256: 470, 512: 445, 1024: 430},
    "sqrt": {32: 3600, 64: 1900, 128: 1000, 256: 560, 512: 530, 1024: 510},
}
DIVERGED = ("linear", 1024)  # every seed diverges
FAILED_ID = "bs2048-linear-s0"  # listed in study.json, no result.json
PROBES = {127: 99_700.0, 128: 100_000.0, 129: 94_000.0}  # 127: -0.3% (noise), 129: -6% (real)
PLOTS = {"time_to_target", "steps_to_target", "throughput", "data_wait", "accuracy_vs_time", "accuracy_vs_samples"}


def throughput_at(batch: int) -> float:
    return 200_000.0 * batch / (batch + 256)


def data_wait_at(batch: int) -> float:
    return 0.04 * (batch / 32) ** 0.8  # crosses 30% between 256 (21%) and 512 (37%)


def fabricate_result(overrides: dict, status: str, steps: int | None, rate: float, *, windows_jitter: float = 0.01,
                     extras: bool = True) -> dict:
    """A result.json as scaling/run.py writes it (docs/results.md), with plausible numbers."""
    cfg = RunConfig(**overrides)
    batch = cfg.global_bs
    reached = status == "reached"
    train_time = steps * batch / rate if reached else None
    run_steps = steps if steps is not None else 50
    history = []
    for k in range(1, 6):
        step = max(1, run_steps * k // 5)
        history.append({"step": step, "samples": step * batch, "epoch": step / 100, "time_s": 1.2 * step * batch / rate,
                        "train_time_s": step * batch / rate, "accuracy": 0.3 + 0.6 * k / 5, "loss": 2.0 / k})
    windows = [rate * (1 + windows_jitter * ((i % 3) - 1)) for i in range(8)]
    result = {
        "schema_version": 2, "status": status, "config": cfg.to_dict(),
        "batch": {"global": batch, "per_device": min(batch, 256), "num_processes": 1,
                  "accumulation_steps": max(1, batch // 256), "world_size": 1},
        "lr": {"rule": cfg.lr_scaling, "base": cfg.base_lr, "base_bs": cfg.base_bs,
               "scaled": cfg.base_lr * (batch / cfg.base_bs if cfg.lr_scaling == "linear" else (batch / cfg.base_bs) ** 0.5),
               "warmup_steps": 0, "decay": "constant"},
        "target": {"metric": "accuracy", "value": cfg.target_accuracy},
        "time_to_target_s": 1.2 * train_time if reached else None,
        "train_time_to_target_s": train_time,
        "steps_to_target": steps if reached else None,
        "samples_to_target": steps * batch if reached else None,
        "epochs_to_target": steps / 100 if reached else None,
        "throughput_samples_per_s": rate, "throughput_windows": windows, "steps": run_steps,
        "elapsed_s": 1.0, "train_elapsed_s": 0.8,
        "diverged_at_step": 37 if status == "diverged" else None,
        "final": {"accuracy": history[-1]["accuracy"], "loss": history[-1]["loss"]},
        "history": history if status != "diverged" else history[:1],
        "environment": {"device": "synthetic GPU", "device_type": "cuda", "world_size": 1},
        "model": {"name": "cnn1d", "task": "classification", "parameters": 8_000,
                  "gradient_bytes": [40, 16_000, 128, 16_000], "input_shape": [40], "input_dtype": "float32",
                  "num_classes": 10},
    }
    if extras:
        result["data_wait_fraction"] = data_wait_at(batch)
        result["peak_memory"] = {"allocated_bytes": batch * 2**20 + 50 * 2**20}
    return result


def fabricate_study(root: Path, seeds: int, probe_seeds: int | None = None, extras: bool = True) -> dict:
    """A study folder: 2 LR rules x 6 batches x `seeds`, one diverged configuration, one failed run without
    result.json, and 127/128/129 throughput probes. Returns the study.json it wrote."""
    entries = []

    def add(run_id: str, overrides: dict, result: dict | None, status: str, error: str | None = None):
        entries.append({"id": run_id, "overrides": overrides, "status": status, "output_dir": f"runs/{run_id}",
                        "error_tail": error})
        if result is not None:
            folder = root / "runs" / run_id
            folder.mkdir(parents=True)
            (folder / "result.json").write_text(json.dumps(result))
            (folder / "metrics.jsonl").write_text("")

    for rule, steps_by_batch in STEPS.items():
        for batch in BATCHES:
            for seed in range(seeds):
                jitter = 1 + 0.02 * (seed - (seeds - 1) / 2)  # same per seed at every batch: ratios stay put
                overrides = {"global_bs": batch, "lr_scaling": rule, "seed": seed}
                status = "diverged" if (rule, batch) == DIVERGED else "reached"
                steps = round(steps_by_batch[batch] * jitter) if status == "reached" else None
                rate = throughput_at(batch) * (1 + 0.005 * (seed % 2))
                add(f"bs{batch}-{rule}-s{seed}", overrides,
                    fabricate_result(overrides, status, steps, rate, extras=extras), status)
    add(FAILED_ID, {"global_bs": 2048, "lr_scaling": "linear", "seed": 0}, None, "failed",
        "Traceback (most recent call last):\n  ...\nValueError: synthetic failure at batch 2048")
    for batch, rate in PROBES.items():
        for seed in range(probe_seeds if probe_seeds is not None else seeds):
            overrides = {"global_bs": batch, "per_device_bs": batch, "target_accuracy": None, "max_steps": 50,
                         "seed": seed}
            result = fabricate_result(overrides, "completed", None, rate * (1 + 0.005 * (-1) ** seed),
                                      extras=extras)
            add(f"probe{batch}-s{seed}", overrides, result, "completed")
    study = {"name": "synthetic", "spec": {"grid": {"global_bs": BATCHES}}, "configs": entries}
    (root / "study.json").write_text(json.dumps(study))
    return study


@pytest.fixture(scope="module")
def five(tmp_path_factory):
    root = tmp_path_factory.mktemp("five")
    study = fabricate_study(root, seeds=5)
    paths = write_report(root)
    return study, paths, paths["report.md"].read_text(), paths["report.html"].read_text()


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("two")
    study = fabricate_study(root, seeds=2, probe_seeds=1)
    paths = write_report(root, root / "out")
    return study, paths, paths["report.md"].read_text(), paths["report.html"].read_text()


def _conclusions(markdown: str) -> list[str]:
    section = markdown.split("## Conclusions", 1)[1].split("\n## ", 1)[0]
    return [line[2:] for line in section.splitlines() if line.startswith("- ")]


def _rows(markdown: str, run_id: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith(f"| {run_id} |")]


def test_report_lists_every_configuration_id(five):
    study, paths, md, html = five
    assert set(paths) == {"report.md", "report.html", "findings.json", "devices_time_to_target"} | PLOTS
    for entry in study["configs"]:
        assert len(_rows(md, entry["id"])) == 1, entry["id"]
        assert f"<td>{entry['id']}</td>" in html


def test_every_plot_exists_and_is_embedded_in_the_html(five):
    _, paths, md, html = five
    for name in PLOTS:
        png = paths[name]
        data = png.read_bytes()
        assert png.parent == paths["report.md"].parent and data.startswith(b"\x89PNG") and len(data) > 1000
        assert f"data:image/png;base64,{base64.b64encode(data).decode()}" in html
        assert f"]({png.name})" in md
    assert not re.search(r"(src|href)=\"(?!data:)", html), "the HTML must not load external assets"
    assert "<style>" in html


def test_regimes_and_their_thresholds_appear(five):
    _, _, md, _ = five
    assert "Shallue et al. 2018" in md
    assert "r ≤ 0.6: perfect scaling; 0.6 < r < 0.9: diminishing returns; r ≥ 0.9: no further gain" in md
    assert "| linear | 128 → 256 |" in md and "| perfect scaling |" in md
    assert re.search(r"\| sqrt \| 256 → 512 \| 560 ± \d+ \| 530 ± \d+ \| [\d,]+ / [\d,]+ \| 0\.95 \| [\d.]+–[\d.]+ \| "
                     r"no further gain \|", md)


def test_best_configuration_is_marked(five):
    """The lowest train time is marked on its rows: ★ when the data decide it against every other
    configuration (findings.json says so too), ☆ when they do not."""
    _, paths, md, _ = five
    # From the fabricated numbers: train time = steps x batch / throughput, mean over seeds, all seeds reached.
    times = {(rule, b): steps[b] * b / throughput_at(b) for rule, steps in STEPS.items() for b in BATCHES
             if (rule, b) != DIVERGED}
    rule, batch = min(times, key=times.get)
    fastest = next(f for f in json.loads(paths["findings.json"].read_text())["findings"] if f["id"] == "fastest")
    assert fastest["numbers"]["configuration"] == f"batch {batch} ({rule})"
    mark = "★ best" if fastest["decided"] else "☆ lowest mean (not decided)"
    marked = [line.split(" | ")[0][2:] for line in md.splitlines()
              if ("★" in line or "☆" in line) and line.startswith("| ")]
    # The best and the configurations that train identically to it (the other rule at the reference batch).
    twins = [label.removeprefix("batch ").replace(" (", "-").rstrip(")")
             for label in fastest["numbers"]["identical_training"]]
    expected = [f"bs{key}-s{seed}" for key in [f"{batch}-{rule}", *twins] for seed in range(5)]
    assert sorted(marked) == sorted(expected)
    assert all(mark in line for line in md.splitlines() if line.startswith(f"| bs{batch}-{rule}-s"))
    lead = "The fastest configuration" if fastest["decided"] else "Lowest mean train time"
    assert fastest["statement"].startswith(lead) and f"global batch {batch} ({rule})" in fastest["statement"]


def test_mlperf_scoring_appears_with_five_seeds_only(five, two):
    _, _, md5, _ = five
    _, _, md2, _ = two
    assert "| MLPerf-style score (s) |" in md5 and "MLPerf-style score (fastest and slowest" in md5
    assert "MLPerf-style score" not in md2
    assert "needs at least 5 seeds" in md2
    assert seeds.mlperf_score([5.0, 1.0, 2.0, 3.0, 100.0]) == pytest.approx(10 / 3)
    assert seeds.mlperf_score([1.0, 2.0, 3.0, 4.0]) is None


def test_seed_table_has_mean_and_std(two):
    _, _, md, _ = two
    (row,) = [line for line in md.splitlines() if line.startswith("| batch 256 (sqrt) | 2 | 2/2 |")]
    assert "| 560 ± 8 |" in row  # steps of seeds 0 and 1: round(560 x 0.99) = 554, round(560 x 1.01) = 566


def test_conclusions_follow_the_fabricated_numbers(five):
    _, _, md, _ = five
    lines = _conclusions(md)
    knee = [line for line in lines if "saves under 10% of steps" in line]
    assert len(knee) == 2 and all("beyond global batch 256," in line for line in knee)
    assert any(line.startswith("sqrt: perfect scaling (r ≤ 0.6) holds up to batch 256") for line in lines)
    assert "LR rule: sqrt reached the target at every batch size (32–1024)." in lines
    assert ("LR rule: linear reached the target up to batch 512 and did not reach it from batch 1024 "
            "(1024 diverged, 2048 failed).") in lines
    assert any(line.startswith("From global batch 512 the data-wait share exceeds 30%") for line in lines)
    assert any("larger batches did not reach the target with every seed (1024 diverged, 2048 failed)" in line
               for line in knee)


def test_power_of_two_against_neighbours(five, two):
    """128 is 6% faster than 129 but as fast as 127: being a power of two is not what matters, so with five
    seeds each pair is judged (127: no practical difference; 129: slower) and the question stays open."""
    _, _, md, _ = five
    row127 = next(line for line in md.splitlines() if line.startswith("| global (= per-device) | 128 | 127 |"))
    row129 = next(line for line in md.splitlines() if line.startswith("| global (= per-device) | 128 | 129 |"))
    assert "| +0.3% |" in row127 and row127.endswith("| 5 / 5 | no practical difference |")
    assert "| +6.4% |" in row129 and row129.endswith("| 5 / 5 | power faster |")
    (line,) = [line for line in _conclusions(md) if line.startswith("Power of two: ")]
    assert "against 129, throughput +6.4%" in line and "not decided" in line
    # One seed per probe: the spread of its logging windows is not run-to-run noise, so nothing is judged.
    _, _, md2, _ = two
    row = next(line for line in md2.splitlines() if line.startswith("| global (= per-device) | 128 | 129 |"))
    assert row.endswith("| — (one seed) | 1 / 1 | cannot tell |")
    (line,) = [line for line in _conclusions(md2) if line.startswith("Power of two: ")]
    assert "one seed per configuration: not decided" in line


def test_failed_and_diverged_runs_are_listed_with_their_status(five):
    _, _, md, _ = five
    (failed,) = _rows(md, FAILED_ID)
    assert "| failed |" in failed and "ValueError: synthetic failure at batch 2048" in failed
    assert "no result.json" in failed and "| 2,048 |" in failed
    (diverged,) = _rows(md, "bs1024-linear-s0")
    assert "| diverged |" in diverged and "diverged at step 37" in diverged
    assert "| 256 × 1 × 4 |" in diverged


def test_every_question_has_a_heading(five):
    _, _, md, _ = five
    for question in ("Is a bigger batch faster to the target?", "How should the learning rate scale?",
                     "Does a power of two matter?", "When does data loading become the limit?",
                     "What is the largest useful batch?"):
        assert f"\n## {question}\n" in md


def test_out_dir_receives_the_files(two, tmp_path):
    _, paths, _, _ = two
    assert all(path.parent.name == "out" for path in paths.values())
    assert not (paths["report.md"].parent.parent / "report.md").exists()


def test_any_folder_of_results_without_study_json(tmp_path):
    """No study.json: every result.json at any depth is a run; ids are their folders; optional fields absent."""
    for batch, where in ((64, "a"), (128, "deep/er/b"), (256, "c")):
        overrides = {"global_bs": batch, "seed": 0}
        folder = tmp_path / where
        folder.mkdir(parents=True)
        result = fabricate_result(overrides, "reached", STEPS["sqrt"][batch], throughput_at(batch), extras=False)
        (folder / "result.json").write_text(json.dumps(result))
    (tmp_path / "running").mkdir()
    (tmp_path / "running" / "result.json").write_text(json.dumps({"status": "running", "config": {}}))
    paths = write_report(tmp_path)
    md = paths["report.md"].read_text()
    for run_id in ("a", "deep/er/b", "c", "running"):
        assert len(_rows(md, run_id)) == 1
    assert "| incomplete |" in md
    assert "data_wait" not in paths and "Not recorded by these runs: data-wait share and peak memory." in md
    assert "Only one LR rule (sqrt) in this study: nothing to compare." in md
    assert "No configuration ran with several seeds" in md


def test_a_folder_without_results_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no finished runs"):
        write_report(tmp_path)
    (tmp_path / "runs" / "x").mkdir(parents=True)
    (tmp_path / "runs" / "x" / "result.json").write_text("{ torn")
    with pytest.raises(ConfigError, match="no finished runs"):
        write_report(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        write_report(tmp_path / "missing")
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize(("ratio", "regime"), [(0.5, largest.REGIME_PERFECT), (0.6, largest.REGIME_PERFECT),
                                               (0.61, largest.REGIME_DIMINISHING), (0.9, largest.REGIME_NO_GAIN),
                                               (1.2, largest.REGIME_NO_GAIN)])
def test_regime_thresholds(ratio, regime):
    assert largest.classify_ratio(ratio) == regime


def test_decompositions_of_one_global_batch_are_compared(tmp_path):
    for per_device in (64, 256):
        overrides = {"global_bs": 256, "per_device_bs": per_device, "target_accuracy": None, "max_steps": 40}
        result = fabricate_result(overrides, "completed", None, 400.0 * per_device, extras=False)
        result["batch"].update(per_device=per_device, accumulation_steps=256 // per_device)
        (tmp_path / f"pd{per_device}").mkdir()
        (tmp_path / f"pd{per_device}" / "result.json").write_text(json.dumps(result))
    md = write_report(tmp_path)["report.md"].read_text()
    assert ("At global batch 256, the decomposition 256 × 1 × 1 is the fastest (102,400 samples/s), 4.00× the "
            "slowest, 64 × 1 × 4 (25,600 samples/s) (not decided).") in _conclusions(md)
    assert "No run reached its target: no time-to-target plot." in md


def test_a_study_of_failed_runs_still_reports_them(tmp_path):
    entries = [{"id": f"bs{b}", "overrides": {"global_bs": b, "seed": 0}, "status": "oom", "output_dir": f"runs/bs{b}",
                "error_tail": "torch.OutOfMemoryError: CUDA out of memory"} for b in (4096, 8192)]
    (tmp_path / "study.json").write_text(json.dumps({"name": "oom", "configs": entries}))
    paths = write_report(tmp_path)
    md = paths["report.md"].read_text()
    assert set(paths) == {"report.md", "report.html", "findings.json"}
    assert "| bs8192 | 8,192 |" in md and "CUDA out of memory" in md
    assert "2 of 2 runs did not reach the target: 2 out of memory." in _conclusions(md)
