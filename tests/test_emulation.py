"""Every decomposition of one global batch trains on the same samples with the same gradients.

(a) 1 process, no accumulation; (b) 1 process with accumulation; (c) 2 processes (torchrun, gloo);
(d) 2 processes with accumulation; (e) 1 process emulating 4 processes with accumulation. Per-step
training losses over 30 optimizer steps and the final parameters must agree in float32.
"""

import json

import pytest
import torch

from conftest import REPO, SMALL, assert_ok, load_result, run_entry, run_torchrun

COMMON = [*SMALL, "--global-bs", "256", "--max-steps", "30", "--target-accuracy", "none", "--eval-every", "10",
          "--lr-scaling", "linear", "--base-lr", "0.05", "--base-bs", "64", "--warmup-steps", "5", "--save-model"]

DECOMPOSITIONS = {
    "1x256x1": (1, ["--per-device-bs", "256"]),
    "1x64x4": (1, ["--per-device-bs", "64"]),
    "2x128x1": (2, ["--per-device-bs", "128"]),
    "2x32x4": (2, ["--per-device-bs", "32"]),
    "emulated 4x32x2 on 1": (1, ["--per-device-bs", "32", "--emulate-processes", "4"]),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("decompositions")
    out = {}
    for name, (nproc, extra) in DECOMPOSITIONS.items():
        folder = root / name.replace(" ", "_")
        args = [*COMMON, *extra, "--output-dir", str(folder)]
        proc = run_torchrun(args, nproc=nproc) if nproc > 1 else run_entry(args)
        assert_ok(proc)
        out[name] = (load_result(folder), torch.load(folder / "model.pt"))
    return out


@pytest.mark.slow
def test_topology_is_recorded(runs):
    expected = {
        "1x256x1": (256, 1, 1, 1), "1x64x4": (64, 1, 4, 1), "2x128x1": (128, 2, 1, 2), "2x32x4": (32, 2, 4, 2),
        "emulated 4x32x2 on 1": (32, 4, 2, 1),
    }
    for name, (result, _) in runs.items():
        batch = result["batch"]
        got = (batch["per_device"], batch["num_processes"], batch["accumulation_steps"], batch["world_size"])
        assert got == expected[name], name
        assert batch["global"] == 256 and batch["emulated"] == (name.startswith("emulated"))
        assert result["environment"]["world_size"] == batch["world_size"]
        assert result["decomposition_exact"] is True


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in DECOMPOSITIONS if n != "1x256x1"])
def test_losses_and_final_parameters_match_the_plain_run(runs, name):
    reference, reference_params = runs["1x256x1"]
    result, params = runs[name]
    assert len(result["train_loss"]) == len(reference["train_loss"]) == 30
    torch.testing.assert_close(torch.tensor(result["train_loss"]), torch.tensor(reference["train_loss"]),
                               rtol=1e-5, atol=0)
    for key, value in reference_params.items():
        scale = value.abs().max().item()
        torch.testing.assert_close(params[key], value, rtol=1e-5, atol=1e-5 * scale, msg=f"{name}: {key}")
    assert result["lr_per_step"] == reference["lr_per_step"]


@pytest.mark.slow
def test_two_processes_without_cpu_flag_train_synchronized_on_a_cpu_only_machine(runs, tmp_path):
    """torchrun without --cpu on a machine without GPUs: Accelerate alone would start each process by itself
    (each training on half of every batch, both writing one result). The run selects the CPU backend, says
    so, and trains exactly as one process at the same global batch."""
    common = [arg for arg in COMMON if arg != "--cpu"]
    small = [arg for arg in SMALL if arg != "--cpu"]
    proc = run_torchrun([*small, *common, "--per-device-bs", "128", "--output-dir", str(tmp_path)])
    assert_ok(proc)
    assert "no GPU here: the 2 launched processes train on the CPU over gloo" in proc.stdout
    assert "2 processes on the CPU over gloo" in proc.stdout
    assert proc.stdout.count("scaling: reached") + proc.stdout.count("scaling: completed") == 1  # one writer
    result = load_result(tmp_path)
    assert result["environment"]["world_size"] == 2 and result["environment"]["distributed_type"] == "MULTI_CPU"
    reference = runs["1x256x1"][0]
    torch.testing.assert_close(torch.tensor(result["train_loss"]), torch.tensor(reference["train_loss"]),
                               rtol=1e-5, atol=0)


@pytest.mark.slow
def test_losses_are_not_trivially_equal(runs):
    """Guard against a vacuous comparison: the loss must actually move over the 30 steps."""
    losses = runs["1x256x1"][0]["train_loss"]
    assert losses[0] - losses[-1] > 0.1


@pytest.mark.slow
def test_gradients_are_synchronized_only_on_the_last_micro_step(tmp_path):
    out = tmp_path / "sync.json"
    proc = run_torchrun([str(out)], script=REPO / "tests" / "scripts" / "check_grad_sync.py", timeout=180)
    assert_ok(proc)
    records = json.loads(out.read_text())
    micro = [r for r in records if "micro_step" in r]
    assert [r["micro_step"] for r in micro] == [0, 1, 2, 0, 1, 2]
    assert [r["sync_gradients"] for r in micro] == [False, False, True] * 2
    assert [r["ranks_equal"] for r in micro] == [False, False, True] * 2
    assert [r["after_step_grads_cleared"] for r in records if "after_step_grads_cleared" in r] == [True, True]
    assert records[-1] == {"params_equal": True}


@pytest.mark.slow
def test_ranks_agree_on_the_smallest_micro_batch(tmp_path):
    base = tmp_path / "agree"
    proc = run_torchrun([str(base)], script=REPO / "tests" / "scripts" / "check_agree.py", timeout=120)
    assert_ok(proc)
    answers = [json.loads((tmp_path / f"agree.{rank}").read_text()) for rank in (0, 1)]
    assert [a["found"] for a in answers] == [700, 300]
    assert [a["agreed"] for a in answers] == [300, 300]


@pytest.mark.slow
def test_batchnorm_makes_decompositions_differ_and_is_reported(tmp_path):
    results = {}
    for name, per_device in (("whole", "256"), ("accumulated", "64")):
        proc = run_entry([*COMMON, "--model", "cnn1d_bn", "--per-device-bs", per_device, "--max-steps", "10",
                          "--output-dir", str(tmp_path / name)])
        assert_ok(proc)
        results[name] = load_result(tmp_path / name)
        assert "batch-coupled layer(s) (BatchNorm)" in proc.stdout
    for result in results.values():
        assert result["decomposition_exact"] is False
        assert any("BatchNorm" in layer or layer.startswith("features") for layer in result["batch_coupled_layers"])
    whole, accumulated = (torch.tensor(results[n]["train_loss"]) for n in ("whole", "accumulated"))
    assert not torch.allclose(whole[1:], accumulated[1:], rtol=1e-4)  # batch statistics differ


@pytest.mark.slow
def test_dataloader_path_follows_the_same_global_batches(tmp_path):
    """In-memory tensors, a plain map-style dataset through the DataLoader (--materialize false), the same
    with batched fetches (`__getitems__`; no item but the first, which the loader checks, read by itself), and the same dataset materialized into
    memory by default: the same batches, the same losses."""
    from test_runs import USER_MODULE

    (tmp_path / "usermod.py").write_text(USER_MODULE)
    losses, outputs = {}, {}
    variants = {"tensors": ("usermod:make_data", "40", []),
                "loader": ("usermod:make_plain_data", "10", ["--materialize", "false"]),
                "batched": ("usermod:make_batched_data", "10", ["--materialize", "false"]),
                "materialized": ("usermod:make_plain_data", "10", [])}
    for name, (dataset, per_device, extra) in variants.items():
        out = tmp_path / name
        proc = run_entry(["--dataset", dataset, "--model", "usermod:make_model", "--global-bs", "40",
                          "--per-device-bs", per_device, "--max-steps", "25", "--target-accuracy", "none", "--cpu",
                          "--progress", "false", "--output-dir", str(out), *extra], cwd=tmp_path)
        assert_ok(proc)
        losses[name] = torch.tensor(load_result(out)["train_loss"])
        outputs[name] = proc.stdout
    assert "training set materialized: 800 samples" in outputs["materialized"]
    assert "materialized" not in outputs["loader"]
    for name in ("loader", "batched", "materialized"):
        torch.testing.assert_close(losses[name], losses["tensors"], rtol=1e-5, atol=0)


def test_impossible_emulation_is_refused_before_training(tmp_path):
    from conftest import assert_one_line_error, run_in_process

    proc = run_in_process([*SMALL, "--global-bs", "256", "--emulate-processes", "3", "--output-dir", str(tmp_path)])
    assert_one_line_error(proc, "not divisible by 3 processes", "255 or 258")
    proc = run_in_process([*SMALL, "--global-bs", "256", "--emulate-processes", "8", "--per-device-bs", "48",
                           "--output-dir", str(tmp_path)])
    assert_one_line_error(proc, "per-device 48 x 8 process(es)", "nearest valid global batch sizes")
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_sync_bn_is_refused_on_cpu_processes(tmp_path):
    proc = run_torchrun([*SMALL, "--model", "cnn1d_bn", "--sync-bn", "--output-dir", str(tmp_path)], timeout=120)
    assert proc.returncode != 0
    assert "scaling: error: --sync-bn needs GPUs" in proc.stderr
    assert proc.stderr.count("scaling: error:") == 1  # only the main process prints it
