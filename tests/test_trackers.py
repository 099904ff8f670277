"""--log-with: a tracker that is not installed is refused before anything runs; an installed one receives
the training, evaluation, noise-scale and phase numbers under plain names."""

import pytest

from conftest import SMALL, assert_ok, assert_one_line_error, run_entry, run_in_process


def test_a_tracker_that_is_not_installed_is_refused_with_the_install_command(tmp_path):
    import accelerate.utils

    if accelerate.utils.is_wandb_available():
        pytest.skip("wandb is installed here")
    proc = run_in_process([*SMALL, "--log-with", "wandb", "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(proc, "--log-with wandb: the wandb package is not installed", "pip install 'scaling[wandb]'")
    assert not (tmp_path / "out" / "result.json").exists()


@pytest.mark.slow
def test_tensorboard_receives_training_evaluation_noise_and_phases(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run_entry([*SMALL, "--log-with", "tensorboard", "--global-bs", "256", "--max-steps", "20",
                      "--eval-every", "10", "--noise-every", "5", "--target-accuracy", "none",
                      "--output-dir", str(tmp_path)])
    assert_ok(proc)
    tags = set()
    for event_file in (tmp_path / "trackers").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    assert {"train/loss", "train/samples_per_s", "eval/accuracy", "eval/loss", "noise/b_simple",
            "phases/data_wait", "phases/forward_backward"} <= tags
    assert not any(tag.startswith("train/train_") for tag in tags)
