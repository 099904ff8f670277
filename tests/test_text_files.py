"""Your own text (scaling/data/text_files.py): real .txt, .jsonl, parquet files and a save_to_disk folder written
here, tokenized by bytes or a BPE trained here (tokenizers' BpeTrainer), packed, cached by datasets, refused
in one line; and one real run of the tool's entry on a .txt file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import datasets
import pytest
import torch

from conftest import assert_ok, assert_one_line_error, load_result, run_in_process
from scaling.config import ConfigError, RunConfig
from scaling.data import load_workload
from scaling.data.hf import HOLDOUT_FRACTION
from scaling.data.text import generate_stories, pack

DOCUMENTS = generate_stories(40, 0)  # about 20 KB of text: 40 documents
EOS = "<|endoftext|>"


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch) -> Path:
    """A datasets cache of the test's own (read by load_dataset at call time), so that its cache files can
    be counted and no test reads another's. conftest already sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE."""
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["HF_DATASETS_OFFLINE"] == "1"
    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    """A byte-level BPE of 400 ids with <|endoftext|>, trained on the documents and saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(DOCUMENTS, trainer)
    path = tmp_path_factory.mktemp("bpe") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


def encoder(spec: str | Path):
    """What the test expects a tokenizer to give for one text, and the id it puts after a document."""
    if spec == "bytes":
        return (lambda text: list(text.encode("utf-8"))), [10]
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(spec))
    return (lambda text: tokenizer.encode(text, add_special_tokens=False).ids), [tokenizer.token_to_id(EOS)]


def expected_stream(documents: list[str], spec: str | Path) -> torch.Tensor:
    encode, separator = encoder(spec)
    return torch.tensor([i for document in documents for i in encode(document) + separator], dtype=torch.int64)


def write_source(tmp_path: Path, kind: str, documents: list[str], eval_documents: list[str] | None = None) -> Path:
    """`documents` as a .txt (one line each), a .jsonl, a parquet file, or a save_to_disk folder (with a test
    split of `eval_documents` when given)."""
    if kind == "txt":
        path = tmp_path / "corpus.txt"
        path.write_text("".join(f"{document}\n" for document in documents), encoding="utf-8")
    elif kind == "jsonl":
        path = tmp_path / "corpus.jsonl"
        path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(documents)))
    elif kind == "parquet":
        path = tmp_path / "corpus.parquet"
        datasets.Dataset.from_dict({"text": documents, "id": list(range(len(documents)))}).to_parquet(str(path))
    else:
        path = tmp_path / "corpus_folder"
        splits = {"train": datasets.Dataset.from_dict({"text": documents})}
        if eval_documents is not None:
            splits["test"] = datasets.Dataset.from_dict({"text": eval_documents})
        datasets.DatasetDict(splits).save_to_disk(str(path))
    return path


def load(path: Path, **fields):
    fields = {"context": 32, "global_bs": 8, "progress": False, **fields}
    return load_workload(RunConfig(dataset=str(path), **fields))


def assert_packed(pair, stream: torch.Tensor, context: int) -> None:
    expected = pack(stream, context)
    assert torch.equal(pair.inputs, expected.inputs) and torch.equal(pair.labels, expected.labels)


@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_a_single_file_is_tokenized_packed_and_its_last_fifth_held_out(tmp_path, bpe, kind, tokenizer):
    spec = bpe if tokenizer == "bpe" else "bytes"
    path = write_source(tmp_path, kind, DOCUMENTS)
    workload = load(path, tokenizer=str(spec))
    if kind == "txt":  # one document, its lines' breaks kept: the file's text, no separator added
        encode, _ = encoder(spec)
        lines = path.read_text().splitlines(keepends=True)
        stream = torch.tensor([i for line in lines for i in encode(line)], dtype=torch.int64)
    else:
        stream = expected_stream(DOCUMENTS, spec)
    if tokenizer == "bytes":
        assert stream.tolist()[:200] == list(("\n".join(DOCUMENTS) + "\n").encode())[:200]
    cut = int(len(stream) * (1 - HOLDOUT_FRACTION))
    assert_packed(workload.train, stream[:cut], 32)
    assert_packed(workload.eval, stream[cut:], 32)
    vocab = 256 if tokenizer == "bytes" else 400
    assert workload.task.name == "next-token" and workload.num_classes == vocab
    assert tuple(workload.input_shape) == (32,)
    assert any("last 20% of tokens" in note for note in workload.notes)


def test_a_save_to_disk_folder_evaluates_on_its_own_test_split(tmp_path, bpe):
    path = write_source(tmp_path, "disk", DOCUMENTS[:30], DOCUMENTS[30:])
    workload = load(path, tokenizer=str(bpe.parent))  # the folder save_pretrained would write
    assert_packed(workload.train, expected_stream(DOCUMENTS[:30], bpe), 32)
    assert_packed(workload.eval, expected_stream(DOCUMENTS[30:], bpe), 32)
    assert not any("held out" in note for note in workload.notes)
    sliced = load(path, train_split="train[:50%]")  # datasets' split slicing, as for classification
    assert_packed(sliced.train, expected_stream(DOCUMENTS[:15], "bytes"), 32)


def cache_files(cache: Path) -> dict[str, int]:
    """datasets' map results (cache-<fingerprint>.arrow) under the cache, with their modification times."""
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob("cache-*.arrow")}


def test_a_second_load_reads_the_cached_map_and_another_tokenizer_makes_its_own(tmp_path, bpe, hf_cache):
    path = write_source(tmp_path, "jsonl", DOCUMENTS)
    first = load(path)
    after_first = cache_files(hf_cache)
    assert len(after_first) == 1
    again = load(path)
    assert cache_files(hf_cache) == after_first  # no new file, the one there not rewritten: map read it
    assert torch.equal(first.train.inputs, again.train.inputs) and torch.equal(first.eval.labels, again.eval.labels)
    other = load(path, tokenizer=str(bpe))
    files = cache_files(hf_cache)
    assert len(files) == 2 and set(after_first) < set(files)
    assert not torch.equal(first.train.inputs[:1], other.train.inputs[:1])
    column = load(write_source(tmp_path, "parquet", DOCUMENTS), text_column="text")
    assert torch.equal(column.train.inputs, first.train.inputs)  # the same text from another format


def test_auto_takes_text_with_a_label_as_classification(tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps({"text": d, "label": i % 2}) + "\n" for i, d in enumerate(DOCUMENTS)))
    with pytest.raises(ConfigError, match="input column 'text' is not numeric"):
        load(path)


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["bytes", "bpe"])
def test_a_run_on_a_text_file_trains_the_gpt_on_next_tokens(tmp_path, bpe, tokenizer):
    path = write_source(tmp_path, "txt", DOCUMENTS)
    out = tmp_path / "run"
    spec = str(bpe) if tokenizer == "bpe" else "bytes"
    proc = run_in_process(["--dataset", str(path), "--tokenizer", spec, "--model", "gpt", "--context", "16",
                           "--global-bs", "8", "--max-steps", "3", "--eval-every", "3", "--target-accuracy", "none",
                           "--noise-scale", "false", "--progress", "false", "--cpu", "--output-dir", str(out)])
    assert_ok(proc)
    result = load_result(out)
    assert result["model"]["task"] == "next-token"
    assert result["model"]["num_classes"] == (256 if tokenizer == "bytes" else 400)
    assert result["model"]["input_shape"] == [16]
    assert result["tokens"]["per_step"] == 8 * 16
    assert "tokenized with" in proc.stdout


def write_refused(tmp_path: Path, case: str) -> tuple[Path, list[str]]:
    """A source and the extra flags of each refused case."""
    jsonl = tmp_path / "data.jsonl"
    rows = {"no text column": [{"body": d} for d in DOCUMENTS[:5]],
            "not text": [{"text": i} for i in range(5)],
            "empty": [{"text": ""} for _ in range(5)],
            "missing cell": [{"text": "a b c"}, {"text": None}]}
    if case in rows:
        jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows[case]))
        return jsonl, ["--task", "next-token"] if case == "no text column" else []
    txt = write_source(tmp_path, "txt", DOCUMENTS[:5])  # about 2,500 bytes
    if case == "no tokenizer":
        return txt, ["--tokenizer", str(tmp_path / "absent.json")]
    if case == "folder without tokenizer.json":
        return txt, ["--tokenizer", str(tmp_path)]
    if case == "not a tokenizer.json":
        (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
        return txt, ["--tokenizer", str(tmp_path / "tokenizer.json")]
    if case == "empty file":
        (tmp_path / "empty.txt").write_text("")
        return tmp_path / "empty.txt", []
    if case == "context over eval":
        return txt, ["--context", "1024"]
    return txt, ["--context", "64", "--global-bs", "64"]  # "context over a batch": 30 train sequences


@pytest.mark.parametrize("case, fragments", [
    ("no tokenizer", ["--tokenizer", "no such file or folder"]),
    ("folder without tokenizer.json", ["--tokenizer", "holds no tokenizer.json"]),
    ("not a tokenizer.json", ["--tokenizer", "not a tokenizer.json the tokenizers library can read"]),
    ("no text column", ["no text column 'text'; columns: body", "--text-column"]),
    ("not text", ["text column 'text'", "holds int64, not text"]),
    ("empty", ["holds no text (5 rows, all empty)"]),
    ("empty file", ["empty.txt: the file is empty (0 bytes)"]),
    ("missing cell", ["1 missing cell(s), the first in row 1"]),
    ("context over eval", ["--context 1024: the eval split (the last 20% of the tokens of split 'train') holds "
                           "only", "fewer than one sequence of 1025"]),
    ("context over a batch", ["--context 64: the train split 'train' holds", "sequence(s) of 65, fewer than one "
                              "global batch of 64 (--global-bs)"]),
])
def test_bad_text_input_is_refused_in_one_line(tmp_path, case, fragments):
    path, extra = write_refused(tmp_path, case)
    proc = run_in_process(["--dataset", str(path), "--model", "gpt", "--max-steps", "1", "--cpu", "--progress",
                           "false", "--output-dir", str(tmp_path / "out"), *extra])
    assert_one_line_error(proc, *fragments)
