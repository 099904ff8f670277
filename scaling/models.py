"""Built-in models and `module:callable` loading."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from scaling.callables import call_factory, describe_exception, load_callable
from scaling.config import ConfigError
from scaling.task import CLASSIFICATION, Task


class CNN1D(nn.Module):
    """The 1-D CNN of the MNIST-1D paper (Greydanus 2020), widened slightly; about 16k parameters.

    No batch-coupled layers (no BatchNorm), so accumulation and emulation are exact for it.
    """

    def __init__(self, length: int = 40, channels: int = 32, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(1, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=2, padding=1), nn.ReLU(),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 1, length)).numel()
        self.head = nn.Linear(flat, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.head(self.features(x).flatten(1))


class MLP(nn.Module):
    def __init__(self, in_features: int = 40, hidden: int = 256, num_classes: int = 10):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN1DBatchNorm(CNN1D):
    """CNN1D with BatchNorm after each convolution: a batch-coupled model, for emulation caveats."""

    def __init__(self, length: int = 40, channels: int = 32, num_classes: int = 10):
        super().__init__(length, channels, num_classes)
        layers: list[nn.Module] = []
        for layer in self.features:
            layers.append(layer)
            if isinstance(layer, nn.Conv1d):
                layers.append(nn.BatchNorm1d(layer.out_channels))
        self.features = nn.Sequential(*layers)


BUILTIN_MODELS: dict[str, Callable[[tuple[int, ...], int], nn.Module]] = {
    "cnn1d": lambda shape, classes: CNN1D(shape[-1], num_classes=classes),
    "cnn1d_bn": lambda shape, classes: CNN1DBatchNorm(shape[-1], num_classes=classes),
    "mlp": lambda shape, classes: MLP(math.prod(shape), num_classes=classes),
}


def check_model_name(name: str) -> None:
    """A built-in name, or a `module:callable` that imports: checked before any data is loaded or generated."""
    if name in BUILTIN_MODELS:
        return
    if ":" not in name:
        raise ConfigError(
            f"unknown model {name!r}; built-in models: {', '.join(BUILTIN_MODELS)}, or give 'module:callable'"
        )
    load_callable(name, "--model")  # imports the module (cached for build_model), calls nothing


def build_model(name: str, input_shape: tuple[int, ...] = (40,), num_classes: int = 10,
                task: Task = CLASSIFICATION) -> nn.Module:
    """A built-in model sized for the data, or whatever `module:callable` returns; its output is checked
    against what the task needs."""
    if name in BUILTIN_MODELS:
        try:
            model = BUILTIN_MODELS[name](input_shape, num_classes)
        except Exception as err:  # sized for the data: a shape it cannot take (a CNN on 2 features)
            raise ConfigError(f"--model {name} cannot be built for inputs of shape {tuple(input_shape)} "
                              f"({describe_exception(err)}); --model mlp takes any shape") from None
        check_model_output(model, name, input_shape, num_classes, task)  # e.g. a CNN on inputs shorter than a kernel
        return model
    if ":" not in name:
        raise ConfigError(
            f"unknown model {name!r}; built-in models: {', '.join(BUILTIN_MODELS)}, or give 'module:callable'"
        )
    model = call_factory(name, "--model", offered=factory_inputs(name, input_shape, num_classes, task))
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {name!r} returned {type(model).__name__}, expected a torch.nn.Module")
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError(f"--model {name!r} returned a model with no trainable parameters: nothing to train")
    check_model_output(model, name, input_shape, num_classes, task)
    return model


def factory_inputs(name: str, input_shape: tuple[int, ...], num_classes: int, task: Task = CLASSIFICATION) -> dict:
    """What a `module:callable` model factory is offered, as keyword arguments it receives if its signature
    names them (or takes **kwargs): `input_shape`, one sample's shape as a tuple (a next-token task's is
    (context,)); `num_classes` for classification, `vocab_size` (the ids the logits must cover) for a
    next-token task (docs/factories.md)."""
    size = {"vocab_size" if task.name == "next-token" else "num_classes": int(num_classes)}
    factory = load_callable(name, "--model")
    if isinstance(factory, type) and factory.__init__ is nn.Module.__init__:
        return {}  # an nn.Module class without its own __init__: Module's **kwargs takes none of them
    return {"input_shape": tuple(int(d) for d in input_shape), **size}


def check_model_output(model: nn.Module, name: str, input_shape: tuple[int, ...], num_classes: int,
                       task: Task = CLASSIFICATION) -> None:
    """One forward pass on two zero inputs of the data's shape (and dtype, when `input_shape` carries it): the
    model must take them and return what the task needs (scaling/task.py: [batch, classes] scores with a
    score for every label of the data)."""
    inputs = torch.zeros((2, *input_shape), dtype=getattr(input_shape, "dtype", torch.float32))
    training = model.training
    model.eval()  # no BatchNorm statistics updated, no dropout randomness drawn
    try:
        with torch.no_grad():
            scores = model(inputs)
    except Exception as err:
        raise ConfigError(f"--model {name!r} cannot take the data's inputs (shape {tuple(input_shape)}): "
                          f"{describe_exception(err)}") from None
    finally:
        model.train(training)
    task.check_outputs(scores, name, num_classes, tuple(input_shape))


def has_batch_coupled_layers(model: nn.Module) -> list[str]:
    """Names of layers whose output depends on other samples of the micro-batch (BatchNorm-style)."""
    coupled = (nn.modules.batchnorm._BatchNorm,)
    return [name for name, module in model.named_modules() if isinstance(module, coupled)]


class SmallCNN2D(nn.Module):
    """Three 3x3 conv + max-pool stages and a linear head; about 26k parameters at the default width.

    Stride-1 convolutions with pooling, not strided convolutions: the curves are one pixel thin, and
    a stride-2 first layer lost about 15 points of accuracy for a 2x saving in compute. No BatchNorm
    (no batch-coupled layers), so gradient accumulation and batch emulation stay exact. The final
    adaptive pooling to 4x4 accepts any image size of 8 pixels or more.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 3 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveMaxPool2d(4),
        )
        self.head = nn.Linear(3 * width * 16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # [N, H, W] grayscale without a channel axis
            x = x.unsqueeze(1)
        return self.head(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 convolutions with BatchNorm and a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """ResNet-18 for 32x32 images, as used for CIFAR-10 (3x3 stem, no max-pool); about 11M parameters.

    It has BatchNorm, so accumulation and emulation are not exact for it (docs/emulation.md).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 64, blocks=(2, 2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        layers, channels = [], width
        for stage, count in enumerate(blocks):
            out = width * 2**stage
            for index in range(count):
                layers.append(BasicBlock(channels, out, stride=2 if stage and index == 0 else 1))
                channels = out
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.stem(x))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of the GPT; the defaults are the "stories" workload's, chosen by benchmarks/lm_sizing.py (docs/lm.md)."""

    vocab_size: int = 256
    context: int = 64  # the largest sequence length (nanoGPT's block_size)
    n_layer: int = 2
    n_head: int = 3
    n_embd: int = 48


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention through torch's scaled_dot_product_attention (flash or memory-efficient
    kernels where the device has them); no dropout, so runs are deterministic."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.n_embd % cfg.n_head:
            raise ValueError(f"n_embd ({cfg.n_embd}) must be a multiple of n_head ({cfg.n_head})")
        self.n_head = cfg.n_head
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.c_attn(x).split(width, dim=2)
        q, k, v = (t.view(batch, length, self.n_head, width // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(batch, length, width))


class GPTBlock(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x)) with a 4x GELU MLP."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """A decoder-only transformer in the style of nanoGPT's model.py (Karpathy): token and learned position
    embeddings, n_layer pre-LayerNorm blocks, a final LayerNorm and an lm_head tied to the token embedding.
    Init as nanoGPT and GPT-2: normal(0, 0.02), biases zero, and the projections into the residual stream
    (attention c_proj, the MLP's second linear) at 0.02 / sqrt(2 * n_layer). forward(idx [B, T] int64) gives
    logits [B, T, vocab] (float)."""

    def __init__(self, cfg: GPTConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or GPTConfig()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.context, cfg.n_embd)
        self.blocks = nn.ModuleList(GPTBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (Press & Wolf 2017), as in GPT-2 and nanoGPT
        self.apply(_init_gpt_weights)
        residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.c_proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp[2].weight, mean=0.0, std=residual_std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        length = idx.shape[1]
        if length > self.cfg.context:
            raise ValueError(f"sequence of {length} tokens is longer than the model's context {self.cfg.context}")
        x = self.wte(idx) + self.wpe(torch.arange(length, device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def _init_gpt_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def gpt_num_parameters(model: GPT) -> int:
    """Parameters without the position embedding (nanoGPT's get_num_params(non_embedding=True)); the token
    embedding counts once, as the tied lm_head. This is the N of the FLOP count below."""
    return sum(p.numel() for p in model.parameters()) - model.wpe.weight.numel()


def gpt_flops_per_token(model: GPT, context: int | None = None) -> int:
    """Training FLOPs per token (forward + backward): 6N + 12 * n_layer * n_embd * T, the count of PaLM's
    Appendix B (Chowdhery et al. 2022, arXiv 2204.02311), which nanoGPT's estimate_mfu uses; 6N is Kaplan et
    al. 2020's C = 6N per token, the second term the attention scores and weighted sum over the T-token
    context (counted in full, not halved for the causal mask)."""
    cfg = model.cfg
    return 6 * gpt_num_parameters(model) + 12 * cfg.n_layer * cfg.n_embd * (context or cfg.context)


def _channels(shape: tuple[int, ...]) -> int:
    """Image channels of an input shape: [C, H, W], or 1 for [H, W] grayscale."""
    return shape[0] if len(shape) == 3 else 1


BUILTIN_MODELS["cnn2d"] = lambda shape, classes: SmallCNN2D(_channels(shape), num_classes=classes)
BUILTIN_MODELS["resnet_cifar"] = lambda shape, classes: ResNetCIFAR(_channels(shape), num_classes=classes)
BUILTIN_MODELS["gpt"] = lambda shape, vocab: GPT(GPTConfig(vocab_size=vocab, context=shape[-1]))  # shape (T,)
