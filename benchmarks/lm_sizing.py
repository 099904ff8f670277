"""Sizing the embedded language-modelling workload ("stories" + --model gpt) with a plain PyTorch loop.

Trains the GPT of scaling/models.py on the stories of scaling/data/text.py at several global batches (AdamW,
constant LR scaled from a base by a rule, cross-entropy mean over tokens, the eval loss on a fixed eval subset
every few steps) and prints steps and seconds to a loss target, per batch and seed. It also prints the
n-gram reference levels of the eval text (unigram, bigram, trigram cross-entropy from train counts), so the
target can be placed against what a model without long context reaches. docs/lm.md records its table.

    python benchmarks/lm_sizing.py                         # the table of docs/lm.md
    python benchmarks/lm_sizing.py --batches 32 --curve    # one loss curve, to place a target
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from scaling.data.tensors import TensorPair  # noqa: E402
from scaling.data.text import load_stories  # noqa: E402
from scaling.models import GPT, GPTConfig, gpt_flops_per_token, gpt_num_parameters  # noqa: E402


def ngram_levels(train: TensorPair, evaluation: TensorPair, vocab: int, alpha: float = 0.01) -> dict[str, float]:
    """Cross-entropy (nats/token) on the eval labels of add-alpha n-gram models counted on the train labels,
    within each packed sequence (as the model sees them): where a model that uses no more than 0, 1 or 2
    previous tokens stops."""
    levels = {}
    for order in (1, 2, 3):
        ctx, nxt = _ngram_keys(train, order, vocab)
        joint = torch.bincount(ctx * vocab + nxt, minlength=vocab**order).double()
        marginal = joint.view(-1, vocab).sum(1)
        eval_ctx, eval_next = _ngram_keys(evaluation, order, vocab)
        p = (joint[eval_ctx * vocab + eval_next] + alpha) / (marginal[eval_ctx] + alpha * vocab)
        levels[f"{order}-gram"] = float(-p.log().mean())
    return levels


def _ngram_keys(pair: TensorPair, order: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the previous order-1 tokens as one id, the next token) for every label position with that much history."""
    seq = torch.cat([pair.inputs[:, :1], pair.labels], dim=1)  # the whole block of context + 1 tokens
    ctx = torch.zeros(seq.shape[0], seq.shape[1] - order + 1, dtype=torch.int64)
    for back in range(order - 1):
        ctx = ctx * vocab + seq[:, back : seq.shape[1] - order + 1 + back]
    return ctx.flatten(), seq[:, order - 1 :].flatten()


@torch.no_grad()
def eval_loss(model: GPT, evaluation: TensorPair, batch: int = 256) -> float:
    """Mean cross-entropy per token over the eval set."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(evaluation), batch):
        inputs, labels = evaluation.inputs[start : start + batch], evaluation.labels[start : start + batch]
        logits = model(inputs)
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum"))
        count += labels.numel()
    model.train()
    return total / count


def steps_to_target(train: TensorPair, evaluation: TensorPair, cfg: GPTConfig, batch: int, lr: float, seed: int,
                    target: float, eval_every: int, max_steps: int, max_seconds: float,
                    curve: bool = False) -> tuple[int | None, float, float, float]:
    """(first evaluated step at or below target or None, training seconds to it (evaluation excluded), the
    median seconds of one step, the last eval loss). Batches are drawn with replacement from a seeded
    generator. The median step time times the steps is the figure to compare: on shared cores a neighbour's
    burst shows in the sum, not in the median."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0)
    draws = torch.Generator().manual_seed(seed)
    trained, loss, times = 0.0, math.inf, []
    for step in range(1, max_steps + 1):
        begin = time.perf_counter()
        inputs, labels = train.batch(torch.randint(0, len(train), (batch,), generator=draws))
        logits = model(inputs)
        batch_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - begin)
        trained += times[-1]
        if step % eval_every == 0:
            loss = eval_loss(model, evaluation)
            if curve:
                print(f"  step {step:5d}  train {batch_loss.item():.3f}  eval {loss:.3f}  {trained:6.1f} s", flush=True)
            if not math.isfinite(loss):
                return None, trained, statistics.median(times), loss
            if loss <= target and not curve:
                return step, trained, statistics.median(times), loss
            if trained > max_seconds:
                return None, trained, statistics.median(times), loss
    return None, trained, statistics.median(times), loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="4,8,16,32,64,128,256", help="global batches, in sequences")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--base-lr", type=float, default=1.6e-3)
    parser.add_argument("--base-bs", type=int, default=256)
    parser.add_argument("--rule", choices=("sqrt", "none", "linear"), default="sqrt")
    parser.add_argument("--target", type=float, default=1.5, help="eval loss, nats/token")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--n-layer", type=int, default=2)
    parser.add_argument("--n-head", type=int, default=3)
    parser.add_argument("--n-embd", type=int, default=48)
    parser.add_argument("--train-sequences", type=int, default=16384, help="of context + 1 tokens each")
    parser.add_argument("--eval-sequences", type=int, default=256)
    parser.add_argument("--eval-every-sequences", type=int, default=512,
                        help="evaluate every max(1, round(this / batch)) steps: the same data between evaluations")
    parser.add_argument("--max-seconds", type=float, default=300.0,
                        help="per run, training time (a cap for runs that stall)")
    parser.add_argument("--max-steps", type=int, default=5000)
    parser.add_argument("--curve", action="store_true", help="print every evaluation and run to max-seconds")
    args = parser.parse_args()

    begin = time.perf_counter()
    block = args.context + 1
    train, evaluation, vocab = load_stories(args.train_sequences * block, args.eval_sequences * block, args.context)
    made = time.perf_counter() - begin
    cfg = GPTConfig(vocab_size=vocab, context=args.context, n_layer=args.n_layer, n_head=args.n_head,
                    n_embd=args.n_embd)
    probe = GPT(cfg)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; data {len(train)} train / "
          f"{len(evaluation)} eval sequences of {args.context} tokens, generated in {made:.2f} s")
    print(f"GPT n_layer={cfg.n_layer} n_head={cfg.n_head} n_embd={cfg.n_embd}: N = {gpt_num_parameters(probe):,} "
          f"parameters without position embeddings, {gpt_flops_per_token(probe):,} training FLOPs per token")
    levels = ngram_levels(train, evaluation, vocab)
    print("n-gram levels on eval (nats/token): " + ", ".join(f"{k} {v:.3f}" for k, v in levels.items()))
    print(f"target {args.target} nats/token; AdamW, LR {args.base_lr:g} at batch {args.base_bs}, rule {args.rule}")
    print("steps: first evaluation at or below the target; s: training seconds to it (evaluation excluded); "
          "med: steps x median step time")
    print(f"{'batch':>6} {'lr':>8} " + " ".join(f"{'seed ' + s:>6} {'s':>5} {'med':>5}" for s in
                                                   args.seeds.split(",")))
    for batch in (int(b) for b in args.batches.split(",")):
        ratio = batch / args.base_bs
        lr = args.base_lr * {"sqrt": math.sqrt(ratio), "none": 1.0, "linear": ratio}[args.rule]
        eval_every = max(1, round(args.eval_every_sequences / batch))
        cells = []
        for seed in (int(s) for s in args.seeds.split(",")):
            if args.curve:
                print(f"batch {batch} lr {lr:.2e} seed {seed}")
            steps, seconds, step_s, _ = steps_to_target(train, evaluation, cfg, batch, lr, seed, args.target, eval_every,
                                                args.max_steps, args.max_seconds, args.curve)
            cells.append(f"{steps if steps else '-':>6} {seconds:5.1f} {(steps or 0) * step_s:5.1f}")
        print(f"{batch:6d} {lr:8.2e} " + " ".join(cells), flush=True)


if __name__ == "__main__":
    main()
