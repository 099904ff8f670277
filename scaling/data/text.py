"""The embedded language-modelling workload "stories": generated short stories, a bytes tokenizer, packing.

Why generated text: no download (hub datasets cannot be reached here or in CI), no new dependency, and the same
seed gives the same bytes on every machine, so a steps-to-target figure is comparable across machines. Why these
stories: they have structure at several ranges, so the loss falls in stages rather than in one drop: byte
frequencies, then spelling (a closed vocabulary of a few hundred words), then syntax and agreement (he/she,
his/her, was/were after one or two subjects), then reference within a story (a character's name introduced
once and used again, an object's colour mentioned and repeated later), which only a model that reads its
context can predict. A bigram model stops well above the last stage (benchmarks/lm_sizing.py prints the
entropies; docs/lm.md has them).

Determinism: every draw comes from `random.Random(stream).random()`, the one method whose sequence Python
guarantees across versions for a given integer seed (choices are `int(u * n)`, not `choice`/`randrange`), and
nothing depends on hash order. Train and eval come from different streams (2*seed and 2*seed + 1), so the eval
set is new stories from the same grammar, not a copy of the training text.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

import torch

from scaling.data.tensors import TensorPair

GIRLS = ("Mia", "Lily", "Emma", "Anna", "Zoe", "Ruby", "Lucy", "Ella", "Sara", "Nina", "Rosa", "Ivy", "Maya",
         "Lena", "Jade", "Kate", "Amy", "Eva", "Tess", "Nora")
BOYS = ("Tom", "Ben", "Max", "Sam", "Leo", "Jack", "Finn", "Noah", "Owen", "Luke", "Adam", "Paul", "Theo", "Hugo",
        "Carl", "Dan", "Eli", "Ivan", "Joe", "Ryan")
COLOURS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "brown", "white", "black", "grey", "gold")
OBJECTS = ("ball", "kite", "hat", "box", "cup", "book", "boat", "car", "drum", "bag", "shoe", "bike", "doll", "train",
           "plane", "sock", "coat", "bell", "lamp", "key", "bowl", "spoon", "chair", "truck")
PLACES = ("park", "garden", "beach", "forest", "school", "shop", "river", "hill", "farm", "lake", "town", "zoo",
          "market", "field", "library", "kitchen")
ANIMALS = ("dog", "cat", "bird", "frog", "duck", "fox", "goat", "cow", "rabbit", "mouse", "horse", "pig")
HIDING = ("a tree", "the bed", "a rock", "the table", "a bush", "the sofa", "a bench", "the stairs")
FEELINGS = ("happy", "sad", "tired", "excited", "scared", "proud", "angry", "hungry", "sleepy", "calm")
SIZES = ("little", "small", "big", "tall", "young", "kind", "funny", "shy")
TIMES = ("One day", "In the morning", "After lunch", "Later", "That night", "On Sunday", "After school", "Then")
LIKES = ("like", "love", "want")
SEPARATOR = "\n"  # between stories; the bytes tokenizer has no special tokens


class Tokenizer(Protocol):
    """What packing needs from a tokenizer: a `tokenizers` BPE (Tokenizer.encode_batch) can sit behind it."""

    vocab_size: int

    def encode(self, texts: list[str]) -> list[list[int]]: ...


class BytesTokenizer:
    """UTF-8 bytes as token ids 0..255: no training, no files, no cache."""

    vocab_size = 256

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


class _Draws:
    """Uniform choices from `random.Random(stream).random()` only (see the module docstring for why)."""

    def __init__(self, stream: int):
        self._random = random.Random(stream).random

    def pick(self, options: Sequence[str]) -> str:
        return options[int(self._random() * len(options))]

    def other(self, options: Sequence[str], taken: str) -> str:
        """One of `options` other than `taken` (rejection, so every other option is equally likely)."""
        while True:
            value = self.pick(options)
            if value != taken:
                return value

    def chance(self, p: float) -> bool:
        return self._random() < p


def _a(word: str) -> str:
    """The indefinite article that agrees with the next word: "an orange kite", "a red kite"."""
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _person(draws: _Draws) -> tuple[str, str, str, str]:
    """(name, he/she, his/her, boy/girl)."""
    if draws.chance(0.5):
        return draws.pick(GIRLS), "she", "her", "girl"
    return draws.pick(BOYS), "he", "his", "boy"


def story(draws: _Draws) -> str:
    """One story of about 6-10 sentences: a hero and an object with a colour, a friend, one to three events
    that refer back to both, an ending. The references (name, pronoun, colour) are what a model must copy
    from earlier in its context."""
    hero, he, his, kind = _person(draws)
    friend, f_he, f_his, _ = _person(draws)
    while friend == hero:
        friend, f_he, f_his, _ = _person(draws)
    colour, thing, place = draws.pick(COLOURS), draws.pick(OBJECTS), draws.pick(PLACES)
    He, His = he.capitalize(), his.capitalize()
    if draws.chance(0.5):
        lines = [f"Once upon a time, there was {_a(draws.pick(SIZES))} {kind} named {hero}."]
    else:
        lines = [f"{hero} was {_a(draws.pick(SIZES))} {kind} who lived near the {place}."]
    lines.append(f"{He} had {_a(colour)} {thing}." if draws.chance(0.5)
                 else f"{His} favourite toy was {_a(colour)} {thing}.")
    lines.append(f"{hero} loved {his} {colour} {thing} very much.")
    lines.append(f"{draws.pick(TIMES)}, {hero} went to the {place} with {his} friend {friend}.")
    events = [_event_admire, _event_animal, _event_swap, _event_play]
    for _ in range(1 + int(draws.pick("0012"))):
        lines.extend(draws.pick(events)(draws, hero, he, his, friend, f_he, f_his, colour, thing))
    if draws.chance(0.5):
        lines.append(f"At the end of the day, {hero} and {friend} went home. They were {draws.pick(FEELINGS)}.")
    else:
        lines.append(f"{hero} said, \"Thank you, {friend}!\" and {he} took the {colour} {thing} home.")
    return " ".join(lines)


def _event_admire(draws: _Draws, hero, he, his, friend, f_he, f_his, colour, thing) -> list[str]:
    return [f"{friend} saw the {colour} {thing} and said, \"I {draws.pick(LIKES)} your {thing}, {hero}!\"",
            f"{hero} was {draws.pick(FEELINGS)}. {he.capitalize()} gave the {thing} to {friend}."]


def _event_animal(draws: _Draws, hero, he, his, friend, f_he, f_his, colour, thing) -> list[str]:
    animal = draws.pick(ANIMALS)
    return [f"Then {_a(animal)} came and took the {colour} {thing}.",
            f"{hero} was sad. {friend} ran after the {animal}.",
            f"{f_he.capitalize()} found the {colour} {thing} under {draws.pick(HIDING)}."]


def _event_swap(draws: _Draws, hero, he, his, friend, f_he, f_his, colour, thing) -> list[str]:
    other_colour, other_thing = draws.other(COLOURS, colour), draws.other(OBJECTS, thing)
    return [f"{friend} had {_a(other_colour)} {other_thing}.",
            f"{hero} gave {f_his} friend the {colour} {thing}, and {friend} gave {hero} the {other_colour} "
            f"{other_thing}.",
            f"Now {hero} had {_a(other_colour)} {other_thing} and {friend} had {_a(colour)} {thing}."]


def _event_play(draws: _Draws, hero, he, his, friend, f_he, f_his, colour, thing) -> list[str]:
    return [f"{hero} and {friend} played with the {colour} {thing} for a long time.",
            f"They were {draws.pick(FEELINGS)}, and {friend} said, \"Your {thing} is {colour}!\""]


def generate_stories(count: int, stream: int) -> list[str]:
    """`count` stories from one fixed stream: the same list on every machine."""
    draws = _Draws(stream)
    return [story(draws) for _ in range(count)]


def token_stream(num_tokens: int, stream: int, tokenizer: Tokenizer | None = None) -> torch.Tensor:
    """A 1-D int64 stream of exactly `num_tokens` tokens: stories from `stream`, each followed by SEPARATOR,
    generated in chunks until there are enough, then cut."""
    tokenizer = tokenizer or BytesTokenizer()
    draws, ids, have = _Draws(stream), [], 0
    while have < num_tokens:
        chunk = tokenizer.encode([story(draws) + SEPARATOR for _ in range(256)])
        for encoded in chunk:
            ids.extend(encoded)
        have = len(ids)
    return torch.tensor(ids[:num_tokens], dtype=torch.int64)


def pack(ids: torch.Tensor, context: int) -> TensorPair:
    """Non-overlapping blocks of context + 1 tokens: inputs = block[:-1], labels = block[1:] (both int64
    [N, context]); the tail shorter than a block is dropped. Labels share no tokens across blocks, so every
    label token is predicted exactly once per epoch."""
    if ids.dim() != 1:
        raise ValueError(f"pack takes a 1-D token stream, got shape {tuple(ids.shape)}")
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    blocks = len(ids) // (context + 1)
    block = ids[: blocks * (context + 1)].long().view(blocks, context + 1)
    return TensorPair(block[:, :-1].contiguous(), block[:, 1:].contiguous())


def load_stories(num_tokens_train: int, num_tokens_eval: int, context: int, seed: int = 0,
                 tokenizer: Tokenizer | None = None) -> tuple[TensorPair, TensorPair, int]:
    """The "stories" dataset: (train, eval, vocab size). Train from stream 2*seed, eval from 2*seed + 1: new
    stories of the same grammar. Each split holds num_tokens // (context + 1) sequences."""
    tokenizer = tokenizer or BytesTokenizer()
    train = pack(token_stream(num_tokens_train, 2 * seed, tokenizer), context)
    evaluation = pack(token_stream(num_tokens_eval, 2 * seed + 1, tokenizer), context)
    return train, evaluation, tokenizer.vocab_size
