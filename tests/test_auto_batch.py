"""`--per-device-bs auto`: grow-then-bisect search on real forward/backward trials, under a memory cap."""

import pytest

from conftest import SMALL, assert_ok, assert_one_line_error, load_result, run_entry, run_torchrun
from scaling.data.tensors import TensorPair
from scaling.memory import NothingFits, find_max_micro_batch, largest_fitting
from scaling.models import CNN1D


@pytest.mark.parametrize("threshold, limit", [(1, 64), (7, 64), (8, 64), (1000, 4096), (4096, 4096), (50, 40)])
def test_grow_then_bisect_finds_the_exact_threshold(threshold, limit):
    calls = []

    def fits(size):
        calls.append(size)
        return size <= threshold

    assert largest_fitting(fits, limit) == min(threshold, limit)
    assert len(calls) <= 2 * limit.bit_length() + 2  # logarithmic number of trials


def test_nothing_fits():
    with pytest.raises(NothingFits):
        largest_fitting(lambda size: False, 64)


def test_measured_peak_grows_with_the_batch_and_the_model_is_untouched():
    import torch

    torch.manual_seed(0)
    data = TensorPair(torch.randn(512, 40), torch.randint(0, 10, (512,)))
    model = CNN1D()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    largest, trials = find_max_micro_batch(model, data, torch.device("cpu"), limit=512, memory_cap_bytes=1_000_000)
    peaks = {t["size"]: t["peak_bytes"] for t in trials}
    sizes = sorted(peaks)
    assert all(peaks[a] < peaks[b] for a, b in zip(sizes, sizes[1:], strict=False))
    assert peaks[largest] <= 1_000_000 < min(p for s, p in peaks.items() if s > largest)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_auto_through_the_entry_single_and_two_processes(tmp_path):
    common = [*SMALL, "--global-bs", "4096", "--num-samples", "8000", "--per-device-bs", "auto",
              "--memory-cap-mb", "5", "--max-steps", "2", "--target-accuracy", "none"]
    assert_ok(run_entry([*common, "--output-dir", str(tmp_path / "one")]))
    one = load_result(tmp_path / "one")
    assert 1024 <= one["auto_batch"]["largest_fitting"] < 2048
    assert one["batch"]["per_device"] == 512 and one["batch"]["accumulation_steps"] == 8  # 90% margin, divisor
    assert any(not t["fits"] for t in one["auto_batch"]["trials"])

    proc = run_torchrun([*common, "--output-dir", str(tmp_path / "two")])
    assert_ok(proc)
    two = load_result(tmp_path / "two")
    assert (two["batch"]["per_device"], two["batch"]["num_processes"], two["batch"]["accumulation_steps"]) == (512, 2, 4)


@pytest.mark.slow
def test_auto_that_cannot_fit_is_refused(tmp_path):
    proc = run_entry([*SMALL, "--per-device-bs", "auto", "--memory-cap-mb", "0.05", "--output-dir", str(tmp_path)])
    assert_one_line_error(proc, "not even a micro-batch of 1 fits in --memory-cap-mb 0.05")
    assert not (tmp_path / "result.json").exists()
