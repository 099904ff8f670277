"""Issue 33 item 5: a `module:callable` model factory receives what it builds with, as keyword arguments
it accepts (named parameters or **kwargs): `input_shape` (one sample's shape, a tuple), `num_classes`
(classification) or `vocab_size` (next-token). A factory that takes none of them is called as before.

Real factories written into tmp_path, loaded as `module:callable` (a module on the path, and a file path).
"""

import functools
import json
import sys
import textwrap

import pytest
import torch
from torch import nn

from conftest import assert_ok, assert_one_line_error, load_result, run_entry
from scaling.callables import accepted_keywords
from scaling.data import InputShape
from scaling.models import build_model
from scaling.task import CLASSIFICATION, NEXT_TOKEN

FACTORIES = textwrap.dedent('''
    import json
    import math
    from pathlib import Path

    from torch import nn

    def record(name, **got):
        """Every call, appended to calls.jsonl next to this file."""
        got = {k: (type(v).__name__, list(v) if isinstance(v, tuple) else v) for k, v in got.items()}
        with open(Path(__file__).with_name("calls.jsonl"), "a") as handle:
            handle.write(json.dumps({"factory": name, **got}) + "\\n")

    def plain():
        """Takes nothing: called as before."""
        record("plain")
        return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))

    def classifier(input_shape, num_classes, hidden=16):
        record("classifier", input_shape=input_shape, num_classes=num_classes)
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), hidden), nn.ReLU(),
                             nn.Linear(hidden, num_classes))

    def keyword_only(*, num_classes):
        record("keyword_only", num_classes=num_classes)
        return nn.Sequential(nn.Flatten(), nn.Linear(40, num_classes))

    def anything(**kwargs):
        record("anything", **kwargs)
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(kwargs["input_shape"]), kwargs["num_classes"]))

    class Net(nn.Module):
        """A class as the factory: its __init__'s parameters count."""
        def __init__(self, num_classes, input_shape=None, width=8):
            super().__init__()
            record("Net", input_shape=input_shape, num_classes=num_classes)
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                                     nn.Linear(width, num_classes))
        def forward(self, x):
            return self.net(x)

    class TinyLM(nn.Module):
        """Next-token: [batch, T] ids -> [batch, T, vocab] logits, sized from what it is given."""
        def __init__(self, input_shape, vocab_size, width=16):
            super().__init__()
            record("TinyLM", input_shape=input_shape, vocab_size=vocab_size)
            self.context = input_shape[-1]
            self.embed = nn.Embedding(vocab_size, width)
            self.head = nn.Linear(width, vocab_size)
        def forward(self, idx):
            assert idx.shape[1] <= self.context
            return self.head(self.embed(idx))

    def lm(**kwargs):
        record("lm", **kwargs)
        return TinyLM(kwargs["input_shape"], kwargs["vocab_size"])

    def strict(input_shape, num_classes):
        raise ValueError("no model for you")
''')


def calls(folder) -> list[dict]:
    path = folder / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def factories(tmp_path):
    (tmp_path / "factories.py").write_text(FACTORIES)
    yield tmp_path
    sys.modules.pop("factories", None)  # a file path spec imports it as `factories`: not the next test's


# ---------------------------------------------------------------- which keywords a signature accepts

def test_only_the_keywords_a_signature_accepts_are_passed():
    offered = {"input_shape": (40,), "num_classes": 10}

    def none_():
        pass

    def named(input_shape, hidden=4):
        pass

    def positional_only(num_classes, /):
        pass

    def var_keyword(hidden=4, **kwargs):
        pass

    class Model(nn.Module):
        def __init__(self, *, num_classes=2):
            super().__init__()

    class Bare(nn.Linear):  # Linear's __init__: none of the names
        pass

    assert accepted_keywords(none_, offered) == {}
    assert accepted_keywords(named, offered) == {"input_shape": (40,)}
    assert accepted_keywords(positional_only, offered) == {}
    assert accepted_keywords(var_keyword, offered) == offered
    assert accepted_keywords(Model, offered) == {"num_classes": 10}
    assert accepted_keywords(Bare, offered) == {}
    assert accepted_keywords(functools.partial(named, hidden=8), offered) == {"input_shape": (40,)}
    assert accepted_keywords(len, offered) == {}  # a built-in: nothing


# ---------------------------------------------------------------- build_model with real factories

@pytest.mark.parametrize("factory, expected", [
    ("plain", {}),
    ("classifier", {"input_shape": ["tuple", [40]], "num_classes": ["int", 10]}),
    ("keyword_only", {"num_classes": ["int", 10]}),
    ("anything", {"input_shape": ["tuple", [40]], "num_classes": ["int", 10]}),
    ("Net", {"input_shape": ["tuple", [40]], "num_classes": ["int", 10]}),
])
def test_a_classification_factory_receives_the_shape_and_classes_it_accepts(factories, factory, expected):
    model = build_model(f"{factories / 'factories.py'}:{factory}", (40,), 10, CLASSIFICATION)
    assert isinstance(model, nn.Module)
    assert calls(factories) == [{"factory": factory, **expected}]


def test_a_next_token_factory_receives_the_shape_and_vocabulary(factories):
    tokens = InputShape((12,), torch.long)  # as a workload gives it: the shape, carrying the ids' dtype
    build_model(f"{factories / 'factories.py'}:TinyLM", tokens, 11, NEXT_TOKEN)
    assert calls(factories) == [{"factory": "TinyLM", "input_shape": ["tuple", [12]], "vocab_size": ["int", 11]}]
    build_model(f"{factories / 'factories.py'}:lm", tokens, 11, NEXT_TOKEN)  # **kwargs: no num_classes offered
    assert calls(factories)[1] == {"factory": "lm", "input_shape": ["tuple", [12]], "vocab_size": ["int", 11]}


def test_an_error_in_a_factory_says_what_it_was_called_with(factories):
    from scaling.config import ConfigError

    with pytest.raises(ConfigError, match=r"raised ValueError: no model for you .*\(called with "
                                          r"input_shape=\(40,\), num_classes=10\)"):
        build_model(f"{factories / 'factories.py'}:strict", (40,), 10, CLASSIFICATION)
    # A classifier's factory on a next-token task: it is not offered num_classes, and says so in one line.
    with pytest.raises(ConfigError, match=r"cannot be called with input_shape=\(12,\): missing a required "
                                          r"argument: 'num_classes'; a model factory is offered input_shape, "
                                          r"vocab_size as keywords \(docs/factories.md\)"):
        build_model(f"{factories / 'factories.py'}:classifier", InputShape((12,), torch.long), 11, NEXT_TOKEN)
    assert calls(factories) == []  # not called at all


# ---------------------------------------------------------------- real runs

@pytest.mark.slow
def test_a_run_on_mnist1d_gives_its_factory_the_samples_shape_and_class_count(factories):
    proc = run_entry(["--model", "factories:classifier", "--num-samples", "2000", "--global-bs", "64",
                      "--max-steps", "3", "--target-accuracy", "none", "--cpu", "--progress", "false",
                      "--output-dir", "out"], cwd=factories)
    assert_ok(proc)
    assert load_result(factories / "out")["status"] == "completed"
    got = calls(factories)
    assert got and all(c == {"factory": "classifier", "input_shape": ["tuple", [40]], "num_classes": ["int", 10]}
                       for c in got)


@pytest.mark.slow
def test_a_run_on_mnist1d_images_gives_its_factory_the_image_shape(factories):
    proc = run_entry(["--dataset", "mnist1d_images", "--model", "factories:Net", "--num-samples", "2000",
                      "--global-bs", "64", "--max-steps", "3", "--target-accuracy", "none", "--cpu", "--progress",
                      "false", "--output-dir", "out"], cwd=factories)
    assert_ok(proc)
    shape = load_result(factories / "out")["model"]["input_shape"]
    got = calls(factories)
    assert len(shape) > 1 and got and all(c["input_shape"] == ["tuple", shape] for c in got)
    assert all(c["num_classes"] == ["int", 10] for c in got)


@pytest.mark.slow
def test_a_run_on_stories_gives_its_factory_the_context_and_vocabulary(factories):
    proc = run_entry(["--dataset", "stories", "--model", "factories:lm", "--context", "16", "--num-samples", "64",
                      "--global-bs", "32", "--max-steps", "3", "--target-loss", "none", "--cpu", "--progress",
                      "false", "--output-dir", "out"], cwd=factories)
    assert_ok(proc)
    assert load_result(factories / "out")["status"] == "completed"
    got = [c for c in calls(factories) if c["factory"] == "lm"]
    assert got and all(c == {"factory": "lm", "input_shape": ["tuple", [16]], "vocab_size": ["int", 256]}
                       for c in got)


@pytest.mark.slow
def test_a_factory_refusing_its_inputs_is_one_line(factories):
    proc = run_entry(["--model", "factories:strict", "--num-samples", "2000", "--max-steps", "3", "--cpu",
                      "--output-dir", "out"], cwd=factories)
    assert_one_line_error(proc, "--model 'factories:strict' raised ValueError: no model for you",
                          "called with input_shape=(40,), num_classes=10")
