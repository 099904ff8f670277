"""The GPU-facing paths, tested on the CPU: bf16, counted FLOPs and MFU lookup, peak memory, the
CIFAR-class ResNet, the synthetic image set and image columns loaded through `datasets`."""

import pytest
import torch

from conftest import SMALL, assert_ok, load_result, run_entry
from scaling.hardware import PEAK_TFLOPS, compute_efficiency, count_train_flops, peak_flops_per_s
from scaling.models import CNN1D, ResNetCIFAR


def test_flop_count_matches_hand_count_for_a_linear_layer():
    model = torch.nn.Linear(100, 10, bias=False)
    flops = count_train_flops(model, torch.randn(8, 100), torch.randint(0, 10, (8,)))
    # forward 2*B*in*out; backward: grad wrt weight (2*B*in*out); no grad wrt the input (it needs none)
    assert flops == 2 * (2 * 8 * 100 * 10)


def test_flops_per_sample_do_not_depend_on_the_batch():
    model = CNN1D()
    small = count_train_flops(model, torch.randn(4, 40), torch.randint(0, 10, (4,))) / 4
    large = count_train_flops(model, torch.randn(64, 40), torch.randint(0, 10, (64,))) / 64
    assert small == pytest.approx(large)


def test_mfu_needs_a_known_peak():
    cpu = compute_efficiency(1e6, 1000.0, 1, torch.device("cpu"), "bf16")
    assert cpu["achieved_flops_per_s"] == 1e9 and cpu["mfu"] is None and cpu["peak_flops_per_s_per_device"] is None
    assert peak_flops_per_s(torch.device("cpu"), "bf16") == (None, None)
    names = [pattern for pattern, _ in PEAK_TFLOPS]
    assert names.index("H100 PCIe") < names.index("H100")  # the more specific name is matched first


def test_resnet_for_cifar_shapes():
    model = ResNetCIFAR()
    assert sum(p.numel() for p in model.parameters()) > 10_000_000
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_bf16_run_on_cpu_records_precision_flops_and_memory(tmp_path):
    assert_ok(run_entry([*SMALL, "--mixed-precision", "bf16", "--global-bs", "256", "--max-steps", "30",
                         "--target-accuracy", "none", "--output-dir", str(tmp_path)]))
    result = load_result(tmp_path)
    assert result["config"]["mixed_precision"] == "bf16" and result["status"] == "completed"
    compute = result["compute"]
    assert compute["precision"] == "bf16" and compute["flops_per_sample"] > 1e5
    assert compute["achieved_flops_per_s"] == pytest.approx(
        compute["flops_per_sample"] * result["throughput_samples_per_s"])
    assert compute["mfu"] is None  # no datasheet peak for a CPU
    assert result["peak_memory"]["host_peak_rss_bytes"] > 0
    assert result["train_loss"][-1] < result["train_loss"][0]  # bf16 still trains


@pytest.mark.slow
def test_synthetic_images_and_image_columns_through_datasets(tmp_path):
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)

    def split(n):
        labels = rng.integers(0, 2, n)
        images = [Image.fromarray((rng.random((8, 8, 3)) * 60 + 150 * y).astype(np.uint8)) for y in labels]
        return datasets.Dataset.from_dict({"img": images, "label": labels.tolist()},
                                          features=datasets.Features({"img": datasets.Image(),
                                                                      "label": datasets.Value("int64")}))

    datasets.DatasetDict(train=split(200), test=split(50)).save_to_disk(str(tmp_path / "imgs"))
    proc = run_entry(["--dataset", str(tmp_path / "imgs"), "--input-column", "img", "--model", "cnn2d",
                      "--global-bs", "50", "--max-steps", "30", "--target-accuracy", "0.9", "--cpu",
                      "--progress", "false", "--output-dir", str(tmp_path / "out")])
    assert_ok(proc)
    assert load_result(tmp_path / "out")["status"] == "reached"

    proc = run_entry(["--dataset", "synthetic_images", "--num-samples", "500", "--model", "cnn2d",
                      "--global-bs", "40", "--max-steps", "5", "--target-accuracy", "none", "--cpu",
                      "--progress", "false", "--output-dir", str(tmp_path / "syn")])
    assert_ok(proc)
    assert load_result(tmp_path / "syn")["train_samples"] == 400


@pytest.mark.slow
def test_compile_and_channels_last_train_as_eager_and_compile_is_off_the_clock(tmp_path):
    """--compile (through Accelerate's dynamo settings; aot_eager here: no code generation on the CPU) and
    --channels-last change how the step runs, not what it computes."""
    common = ["--dataset", "synthetic_images", "--model", "cnn2d", "--num-samples", "2000", "--global-bs", "64",
              "--max-steps", "10", "--target-accuracy", "none", "--cpu", "--progress", "false"]
    results = {}
    for name, extra in (("eager", []), ("compiled", ["--compile", "aot_eager", "--channels-last"])):
        assert_ok(run_entry([*common, *extra, "--output-dir", str(tmp_path / name)]))
        results[name] = load_result(tmp_path / name)
    assert results["eager"]["compile_s"] is None
    assert results["compiled"]["compile_s"] > 0
    assert results["compiled"]["config"]["compile"] == "aot_eager"
    # NHWC convolutions sum in another order: float32 rounding (5e-5 seen over 10 steps), not a different step.
    torch.testing.assert_close(torch.tensor(results["compiled"]["train_loss"]),
                               torch.tensor(results["eager"]["train_loss"]), rtol=1e-3, atol=0)
    # FLOPs are counted on the eager model: the same for both.
    assert results["compiled"]["compute"]["flops_per_sample"] == results["eager"]["compute"]["flops_per_sample"]


def test_channels_last_and_compile_are_refused_where_they_do_not_apply(tmp_path):
    from conftest import assert_one_line_error, run_in_process

    assert_one_line_error(run_in_process([*SMALL, "--channels-last", "--output-dir", str(tmp_path)]),
                          "--channels-last applies to image models")
    assert_one_line_error(run_in_process([*SMALL, "--compile", "fastest", "--output-dir", str(tmp_path)]),
                          "--compile must name a torch.compile backend")
