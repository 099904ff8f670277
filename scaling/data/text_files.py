"""Your own text for next-token prediction: a column of text from any `datasets` source (a .txt, .jsonl/.json or
.parquet file, a `save_to_disk` folder), tokenized, joined into one token stream per split and packed into
blocks of --context tokens (scaling/data/text.py `pack`). docs/text.md says what each rule is and why.

Tokenizing goes through `datasets.Dataset.map` (batched), so datasets caches it beside the source's own cache
files; its fingerprint is built from the source's fingerprint, the tokenizer's identity (`bytes`, or the
sha256 of its tokenizer.json), the column and the separator, so that another --tokenizer or --text-column
never reads a cache made for this one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scaling.config import ConfigError, RunConfig, shown
from scaling.data.tensors import TensorPair
from scaling.data.text import BytesTokenizer, Tokenizer, pack

TOKENIZE_BATCH = 1000  # rows per batched map call: datasets' default, small enough for long documents
IDS_COLUMN = "ids"
# Tokens that end a document in common BPE tokenizers (GPT-2's first), looked up in this order.
EOS_TOKENS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>", "[EOS]")
FINGERPRINT_VERSION = "scaling-text-1"  # change it when the tokenized column's meaning changes


@dataclass
class LoadedTokenizer:
    """A tokenizer, what identifies it for the cache, and the ids put after each document (none: documents
    just concatenate)."""

    tokenizer: Tokenizer
    identity: str
    separator: list[int]
    description: str


class FileTokenizer:
    """A `tokenizers.Tokenizer` (a tokenizer.json) behind text.py's Tokenizer protocol. Special tokens a
    post-processor would add (BERT's [CLS]/[SEP]) are not added: the separator between documents is ours."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def eos_id(self) -> tuple[str, int] | None:
        for token in EOS_TOKENS:
            found = self._tokenizer.token_to_id(token)
            if found is not None:
                return token, found
        return None


def load_tokenizer(spec: str) -> LoadedTokenizer:
    """--tokenizer: `bytes`, a tokenizer.json, or a folder holding one (save_pretrained's output). Local files
    only: nothing is fetched from the hub."""
    if spec == "bytes":
        bytes_tokenizer = BytesTokenizer()
        return LoadedTokenizer(bytes_tokenizer, "bytes", bytes_tokenizer.encode(["\n"])[0], "bytes (UTF-8, 256 ids)")
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(f"--tokenizer {shown(spec)}: the folder holds no tokenizer.json (what a Hugging Face "
                              f"tokenizer's save_pretrained writes); give the file, a folder holding it, or bytes")
    elif not path.is_file():
        raise ConfigError(f"--tokenizer {shown(spec)}: no such file or folder; give bytes, a tokenizer.json, or a "
                          f"folder holding one")
    from tokenizers import Tokenizer as HFTokenizer

    content = path.read_bytes()
    try:
        tokenizer = FileTokenizer(HFTokenizer.from_str(content.decode("utf-8")))
    except Exception as err:  # noqa: BLE001 - the Rust side raises plain Exception for any malformed file
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ConfigError(f"--tokenizer {shown(spec)}: not a tokenizer.json the tokenizers library can read "
                          f"({shown(reason, 100)}); give a tokenizer.json, a folder holding one, or bytes") from None
    eos = tokenizer.eos_id()
    separator = [eos[1]] if eos else []
    after = f"{eos[0]} after each document" if eos else "no separator between documents"
    identity = "sha256:" + hashlib.sha256(content).hexdigest()
    return LoadedTokenizer(tokenizer, identity, separator, f"{path} ({tokenizer.vocab_size:,} ids, {after})")


def wants_text(cfg: RunConfig, columns: list[str]) -> bool:
    """The next-token text path: --task next-token, or with --task auto a split with the text column and no
    label column (a text column beside a label stays classification)."""
    if cfg.task == "next-token":
        return True
    return cfg.task == "auto" and cfg.text_column in columns and cfg.label_column not in columns


def load_text(cfg: RunConfig, dataset_dict: Any, train: Any, split: Callable[[Any, str, str], Any],
              holdout_fraction: float) -> tuple[TensorPair, TensorPair, list[str], int]:
    """(train, eval, notes, vocab size) for next-token prediction. `split` is hf.py's split selection
    (slices like train[:90%]); a source with one split and no --eval-split of its own has the last
    `holdout_fraction` of its token stream held out."""
    name = cfg.dataset
    loaded = load_tokenizer(cfg.tokenizer)
    separator = [] if _is_text_file(name) else loaded.separator
    notes = [f"text: column {cfg.text_column!r} tokenized with {loaded.description}, packed into sequences of "
             f"{cfg.context} tokens"]
    train_ids = _token_stream(train, cfg, loaded, separator, cfg.train_split, cfg.progress)
    base = cfg.eval_split.split("[", 1)[0].strip()
    if len(dataset_dict) == 1 and base not in dataset_dict:
        cut = int(len(train_ids) * (1 - holdout_fraction))
        train_ids, eval_ids = train_ids[:cut], train_ids[cut:]
        eval_where = f"eval split (the last {holdout_fraction:.0%} of the tokens of split {cfg.train_split!r})"
        notes.append(f"--dataset {name!r} has one split: its last {holdout_fraction:.0%} of tokens "
                     f"({len(eval_ids):,} of {len(train_ids) + len(eval_ids):,}) held out for evaluation")
    else:
        eval_ids = _token_stream(split(dataset_dict, cfg.eval_split, name), cfg, loaded, separator,
                                 cfg.eval_split, cfg.progress)
        eval_where = f"eval split {cfg.eval_split!r}"
    _check_fits(train_ids, eval_ids, cfg, eval_where)
    return pack(train_ids, cfg.context), pack(eval_ids, cfg.context), notes, loaded.tokenizer.vocab_size


def _is_text_file(name: str) -> bool:
    """A .txt file is one document whose lines keep their line breaks (hf.py's text builder options): its rows
    join as they are, with no separator between lines."""
    path = Path(name)
    return path.is_file() and path.suffix.lower() == ".txt"


def _check_text_column(split: Any, cfg: RunConfig, where: str) -> None:
    """The text column is there, holds strings, has no missing cells and some text."""
    import datasets
    import pyarrow.compute as pc

    name, column = cfg.dataset, cfg.text_column
    if column not in split.column_names:
        raise ConfigError(f"--dataset {name!r}: split {where!r} has no text column {column!r}; columns: "
                          f"{', '.join(split.column_names) or 'none'} (set --text-column)")
    feature = split.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
        raise ConfigError(f"--dataset {name!r}: text column {column!r} of split {where!r} holds {kind}, not text "
                          f"(set --text-column to a column of strings)")
    values = split.with_format("arrow")[column]  # the rows a slice selects, not the whole table under it
    if values.null_count:
        first = pc.index(pc.is_null(values), True).as_py()
        raise ConfigError(f"--dataset {name!r}: text column {column!r} of split {where!r} has {values.null_count} "
                          f"missing cell(s), the first in row {first} (counting from 0); fill or drop them")
    characters = pc.sum(pc.utf8_length(values)).as_py() if len(values) else 0
    if not characters:
        raise ConfigError(f"--dataset {name!r}: text column {column!r} of split {where!r} holds no text "
                          f"({len(values):,} rows, all empty)")


def _token_stream(split: Any, cfg: RunConfig, loaded: LoadedTokenizer, separator: list[int], where: str,
                  progress: bool) -> torch.Tensor:
    """The split's documents tokenized (a cached batched map), each followed by `separator`, as one int64
    stream."""
    import datasets
    import numpy as np

    _check_text_column(split, cfg, where)
    column, tokenizer = cfg.text_column, loaded.tokenizer

    def tokenize(batch: dict[str, list]) -> dict[str, list[list[int]]]:
        return {IDS_COLUMN: [ids + separator for ids in tokenizer.encode(batch[column])]}

    fingerprint = hashlib.sha256(repr((FINGERPRINT_VERSION, split._fingerprint, loaded.identity, column,
                                       separator)).encode()).hexdigest()[:32]
    was_disabled = datasets.are_progress_bars_disabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        tokenized = split.map(tokenize, batched=True, batch_size=TOKENIZE_BATCH, remove_columns=split.column_names,
                              features=datasets.Features({IDS_COLUMN: datasets.Sequence(datasets.Value("int32"))}),
                              new_fingerprint=fingerprint, desc=f"tokenizing {where}")
    finally:
        if not progress and not was_disabled:
            datasets.enable_progress_bars()
    ids = tokenized.data.column(IDS_COLUMN)
    flat = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in ids.chunks if len(chunk)]
    stream = np.concatenate(flat) if flat else np.zeros(0, dtype=np.int32)
    return torch.from_numpy(stream.astype(np.int64))


def _check_fits(train_ids: torch.Tensor, eval_ids: torch.Tensor, cfg: RunConfig, eval_where: str) -> None:
    """Each split at least one sequence of context + 1 tokens, the train split at least one global batch of
    them: said in tokens and naming --context, before the batch plan would refuse it in samples."""
    block = cfg.context + 1
    if len(eval_ids) < block:
        raise ConfigError(f"--context {cfg.context}: the {eval_where} holds only {len(eval_ids):,} tokens, fewer "
                          f"than one sequence of {block}; use a smaller --context or more text")
    sequences = len(train_ids) // block
    if sequences < max(cfg.global_bs, 1):
        raise ConfigError(f"--context {cfg.context}: the train split {cfg.train_split!r} holds {len(train_ids):,} "
                          f"tokens, {sequences:,} sequence(s) of {block}, fewer than one global batch of "
                          f"{cfg.global_bs} (--global-bs); use a smaller --context or --global-bs, or more text")
