"""The four benchmark models, their training, and the weight cache.

Vision (3x32x32 digits, 10 classes): :class:`VGGStyle`, a VGG-style CNN (3x3 convolutions with biases,
ReLU, 2x2 max pooling, two dense layers), and :func:`vit`, a torchvision ``VisionTransformer`` (patch 4,
4 layers, 4 heads, hidden 64, MLP 128). Text (planted-token sequences): a BERT-style
``BertForSequenceClassification`` and a Llama-style ``LlamaForSequenceClassification`` built from
transformers configs (random init, eager attention, no dropout), classifying from ``[CLS]`` (BERT's pooler)
or the last token ``[EOS]`` (Llama).

Weights are cached as ``<cache>/<name>.pt`` (state dict, the spec that built them, the transformers config
for the text models, test accuracy, training time) and retrained when the file is absent or its spec
differs. The text models are rebuilt from the same keyword arguments under transformers 4.x in the LXT
environment, so their state dicts load there too.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .data import N_CLASSES, TokenTask, digits, planted_tokens, shift_augment


@dataclass(frozen=True)
class Spec:
    """What builds and trains one model (part of the cache key)."""

    name: str
    arch: str  # vgg_cnn | vit | bert | llama
    epochs: int
    lr: float
    weight_decay: float = 0.0
    batch: int = 64
    width: int = 64  # CNN: channels of the last block; ViT / text: hidden size
    layers: int = 4
    heads: int = 4
    task: TokenTask | None = None  # text models only
    n_train: int = 6000  # text models: training sequences
    seed: int = 0

    @property
    def is_text(self) -> bool:
        return self.task is not None


# --- architectures ---------------------------------------------------------------------------------

class VGGStyle(nn.Module):
    """``features`` (3x3 convolutions with biases, ReLU, 2x2 max pooling), ``torch.flatten``, ``classifier``
    (dense, ReLU, dense); laid out like torchvision's VGG (so Captum's LRP, which has no rule for
    ``nn.Flatten``, runs on it)."""

    def __init__(self, width: int = 64):
        super().__init__()
        a, b, c = width // 4, width // 2, width
        self.features = nn.Sequential(
            nn.Conv2d(3, a, 3, padding=1), nn.ReLU(), nn.Conv2d(a, a, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(b, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Linear(c * 16, 2 * c), nn.ReLU(), nn.Linear(2 * c, N_CLASSES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vit(width: int = 64, layers: int = 4, heads: int = 4) -> nn.Module:
    """torchvision ``VisionTransformer`` for 32x32 inputs, patch 4 (64 patches + class token)."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=4, num_layers=layers, num_heads=heads, hidden_dim=width,
                             mlp_dim=2 * width, num_classes=N_CLASSES)


def text_config_kwargs(spec: Spec) -> dict[str, Any]:
    """Keyword arguments of the transformers config (identical under transformers 4.x and 5.x)."""
    task = spec.task
    common = dict(vocab_size=task.vocab_size, hidden_size=spec.width, num_hidden_layers=spec.layers,
                  num_attention_heads=spec.heads, intermediate_size=2 * spec.width, num_labels=task.n_classes,
                  pad_token_id=0)
    if spec.arch == "bert":
        return common | dict(max_position_embeddings=task.length, hidden_dropout_prob=0.0,
                             attention_probs_dropout_prob=0.0, type_vocab_size=1)
    return common | dict(num_key_value_heads=max(1, spec.heads // 2), max_position_embeddings=task.length,
                         attention_dropout=0.0)


def text_model(spec: Spec, attn: str = "eager") -> nn.Module:
    """The classes are looked up in their modeling modules at call time, so a model built after LXT
    patched (or replaced) those modules is LXT's."""
    from transformers.models.bert import modeling_bert
    from transformers.models.llama import modeling_llama

    kwargs = text_config_kwargs(spec)
    if spec.arch == "bert":
        return modeling_bert.BertForSequenceClassification(modeling_bert.BertConfig(**kwargs, attn_implementation=attn))
    return modeling_llama.LlamaForSequenceClassification(
        modeling_llama.LlamaConfig(**kwargs, attn_implementation=attn))


def build(spec: Spec) -> nn.Module:
    """A freshly initialised model (seeded by ``spec.seed``)."""
    torch.manual_seed(spec.seed)
    if spec.arch == "vgg_cnn":
        return VGGStyle(spec.width)
    if spec.arch == "vit":
        return vit(spec.width, spec.layers, spec.heads)
    if spec.arch in ("bert", "llama"):
        return text_model(spec)
    raise ValueError(f"unknown architecture {spec.arch!r}")


def embed(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """The token embeddings a text model is explained at (``inputs_embeds``), detached."""
    with torch.no_grad():
        return model.get_input_embeddings()(ids).detach()


def text_logits(model: nn.Module, embeds: torch.Tensor) -> torch.Tensor:
    return model(inputs_embeds=embeds).logits


# --- data per model --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dataset:
    """Train / test inputs of one model: images, or token ids plus the planted mask."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    planted: torch.Tensor | None = None  # (n_test, length) for the text task


def dataset(spec: Spec, n_test: int = 1000) -> Dataset:
    if not spec.is_text:
        train, test = digits(seed=spec.seed)
        return Dataset(train.x, train.y, test.x, test.y)
    train = planted_tokens(spec.task, spec.n_train, seed=1000 + spec.seed)
    test = planted_tokens(spec.task, n_test, seed=2000 + spec.seed)
    return Dataset(train.ids, train.y, test.ids, test.y, test.planted)


def forward(model: nn.Module, spec: Spec, x: torch.Tensor) -> torch.Tensor:
    """Logits from images, or from token ids (through the model's own embedding)."""
    return model(input_ids=x).logits if spec.is_text else model(x)


@torch.no_grad()
def accuracy(model: nn.Module, spec: Spec, x: torch.Tensor, y: torch.Tensor, batch: int = 256) -> float:
    model.eval()
    hits = sum((forward(model, spec, x[i:i + batch]).argmax(-1) == y[i:i + batch]).sum().item()
               for i in range(0, len(y), batch))
    return hits / len(y)


def train(model: nn.Module, spec: Spec, data: Dataset, log: Callable[[str], None] = print) -> nn.Module:
    """AdamW with linear warm-up (5% of steps) and cosine decay; images get random shifts of up to 2 px."""
    g = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps_per_epoch = math.ceil(len(data.y_train) / spec.batch)
    total = spec.epochs * steps_per_epoch
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(s, total) / total))))
    for epoch in range(spec.epochs):
        model.train()
        order = torch.randperm(len(data.y_train), generator=g)
        running = 0.0
        for i in range(0, len(order), spec.batch):
            idx = order[i:i + spec.batch]
            x = data.x_train[idx]
            if not spec.is_text:
                x = shift_augment(x, g)
            loss = nn.functional.cross_entropy(forward(model, spec, x), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            running += loss.item() * len(idx)
        if epoch == spec.epochs - 1 or (epoch + 1) % max(1, spec.epochs // 5) == 0:
            log(f"  {spec.name} epoch {epoch + 1}/{spec.epochs}: loss {running / len(order):.4f}")
    return model.eval()


def _spec_key(spec: Spec) -> dict[str, Any]:
    return dataclasses.asdict(spec)


def load_or_train(spec: Spec, cache: Path, retrain: bool = False,
                  log: Callable[[str], None] = print) -> tuple[nn.Module, Dataset, dict[str, Any]]:
    """``(model in eval mode, its data, info)``; info: ``test_accuracy``, ``train_seconds``, ``cached``."""
    data = dataset(spec)
    path = cache / f"{spec.name}.pt"
    model = build(spec)
    if path.exists() and not retrain:
        saved = torch.load(path, weights_only=False)
        if saved["spec"] == _spec_key(spec):
            model.load_state_dict(saved["state"])
            model.eval()
            return model, data, {**saved["info"], "cached": True}
    log(f"training {spec.name} ({sum(p.numel() for p in model.parameters())} parameters)")
    start = time.perf_counter()
    train(model, spec, data, log)
    info = {"test_accuracy": accuracy(model, spec, data.x_test, data.y_test),
            "train_seconds": time.perf_counter() - start}
    cache.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict() if spec.is_text else None
    torch.save({"spec": _spec_key(spec), "state": model.state_dict(), "config": config, "info": info}, path)
    log(f"  {spec.name}: test accuracy {info['test_accuracy']:.4f} in {info['train_seconds']:.0f} s")
    return model, data, {**info, "cached": False}


def load_cached(spec: Spec, cache: Path, attn: str = "eager") -> nn.Module:
    """The cached weights in a model rebuilt from ``spec`` (used by the LXT process; no training)."""
    saved = torch.load(cache / f"{spec.name}.pt", weights_only=False)
    if saved["spec"] != _spec_key(spec):
        raise RuntimeError(f"cached {spec.name} was built from another spec; rerun the main benchmark")
    model = text_model(spec, attn) if spec.is_text else build(spec)
    model.load_state_dict(saved["state"])
    return model.eval()
