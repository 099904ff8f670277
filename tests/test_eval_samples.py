"""--eval-samples N: a run evaluates on the first N samples of its evaluation set (stories: N new sequences), and
the loss it reports is the loss over exactly those samples."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_one_line_error, load_result, run_in_process
from scaling.config import make_config
from scaling.data import load_workload
from scaling.data.tensors import TensorPair


def test_the_first_n_samples_of_every_kind_of_evaluation_set():
    whole = load_workload(make_config({"num_samples": 2000}))
    first = load_workload(make_config({"num_samples": 2000, "eval_samples": 100}))
    assert isinstance(first.eval, TensorPair) and len(first.eval) == 100
    assert torch.equal(first.eval.inputs, whole.eval.inputs[:100])
    assert torch.equal(first.eval.labels, whole.eval.labels[:100])

    stories = load_workload(make_config({"dataset": "stories", "num_samples": 512, "eval_samples": 64}))
    default = load_workload(make_config({"dataset": "stories", "num_samples": 512}))
    assert len(stories.eval) == 64 and len(default.eval) == 256
    # the same generated evaluation stream, cut shorter
    assert torch.equal(stories.eval.inputs, default.eval.inputs[:64])


def test_more_evaluation_samples_than_the_set_holds_is_refused(tmp_path):
    proc = run_in_process(["--num-samples", "2000", "--eval-samples", "5000", "--cpu", "--max-steps", "2",
                           "--output-dir", str(tmp_path / "out")])
    assert_one_line_error(proc, "--eval-samples 5000 is more than the 400 samples of --dataset 'mnist1d''s "
                                "evaluation set; use at most 400")
    zero = run_in_process(["--eval-samples", "0", "--print-config"])
    assert_one_line_error(zero, "--eval-samples must be > 0, got 0")


@pytest.mark.slow
def test_a_run_reports_the_loss_over_the_first_n_evaluation_samples(tmp_path):
    """The run's final evaluation loss equals a plain evaluation, written here, of its saved model over the
    first N evaluation samples."""
    out = tmp_path / "run"
    proc = run_in_process(["--num-samples", "2000", "--eval-samples", "150", "--global-bs", "64", "--max-steps", "5",
                           "--target-accuracy", "none", "--cpu", "--save-model", "--output-dir", str(out)])
    assert proc.returncode == 0, proc.stderr
    result = load_result(out)
    assert result["eval_samples"] == 150
    from scaling.models import build_model

    evaluation = load_workload(make_config({"num_samples": 2000})).eval
    model = build_model("cnn1d", (40,), 10)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    model.eval()
    with torch.no_grad():
        logits = model(evaluation.inputs[:150])
        loss = torch.nn.functional.cross_entropy(logits, evaluation.labels[:150]).item()
        accuracy = (logits.argmax(1) == evaluation.labels[:150]).double().mean().item()
    assert math.isclose(result["final"]["loss"], loss, rel_tol=1e-5)
    assert result["final"]["accuracy"] == pytest.approx(accuracy, abs=1e-12)


def test_the_first_n_samples_of_a_factory_and_of_a_file_dataset(tmp_path, monkeypatch):
    (tmp_path / "evalfactory.py").write_text(
        "import torch\nfrom torch.utils.data import TensorDataset\n\n\ndef make():\n"
        "    x = torch.arange(600 * 4, dtype=torch.float32).view(600, 4)\n    y = torch.arange(600) % 3\n"
        "    return TensorDataset(x[:500], y[:500]), TensorDataset(x[500:], y[500:])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    workload = load_workload(make_config({"dataset": "evalfactory:make", "model": "mlp", "eval_samples": 30,
                                          "global_bs": 32}))
    assert len(workload.eval) == 30
    assert [float(workload.eval[i][0][0]) for i in (0, 29)] == [2000.0, 2116.0]  # samples 500 and 529

    import datasets

    table = datasets.Dataset.from_dict({"x": [[float(i)] * 3 for i in range(200)], "label": [i % 2 for i in range(200)]})
    table.to_parquet(str(tmp_path / "t.parquet"))
    workload = load_workload(make_config({"dataset": str(tmp_path / "t.parquet"), "model": "mlp", "eval_samples": 7,
                                          "global_bs": 16}))
    assert len(workload.eval) == 7
