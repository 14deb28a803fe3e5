"""The two data sets: scikit-learn's digits as 32x32 images, and planted-token sequences.

Digits (``sklearn.datasets.load_digits``, 1797 images of 8x8 pixels with values 0..16, bundled with
scikit-learn): scaled to [0, 1], upsampled bilinearly to 32x32 and repeated to 3 channels (torchvision's
ViT has a 3-channel patch embedding), then split 70/30 into train / test, stratified by class, seeded.

Planted tokens: a sequence ``[CLS] t_1 .. t_n [EOS]`` of random distractor tokens in which one or two
content positions hold *planted* tokens that alone decide the label (see :func:`planted_tokens`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_SIZE = 32
N_CLASSES = 10


@dataclass(frozen=True)
class Split:
    """Images ``(n, 3, 32, 32)`` in [0, 1] and labels ``(n,)``."""

    x: torch.Tensor
    y: torch.Tensor


def digits(seed: int = 0, test_fraction: float = 0.3) -> tuple[Split, Split]:
    """``(train, test)``: scikit-learn's digits, 32x32, 3 channels, stratified seeded split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(images, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = images.clamp(0.0, 1.0).repeat(1, 3, 1, 1)
    labels = torch.tensor(bunch.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=test_fraction,
                                           random_state=seed, stratify=labels.numpy())
    return (Split(images[train_idx], labels[train_idx]), Split(images[test_idx], labels[test_idx]))


def shift_augment(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Each image translated by a random integer offset in ``[-max_shift, max_shift]^2`` (zero fill)."""
    padded = F.pad(x, [max_shift] * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (x.shape[0], 2), generator=generator)
    size = x.shape[-1]
    return torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(offsets.tolist())])


# --- planted tokens --------------------------------------------------------------------------------

PAD, CLS, EOS = 0, 1, 2


@dataclass(frozen=True)
class TokenTask:
    """Vocabulary layout and rule of the planted-token task.

    Ids: 0 pad (never used), 1 ``[CLS]``, 2 ``[EOS]``; then ``values_per_class * n_classes`` *value*
    tokens (value token ``v`` has class ``(v - 3) // values_per_class``); then distractors up to
    ``vocab_size``.

    ``n_planted = 1``: the sequence holds one value token (planted); label = its class.
    ``n_planted = 2``: two value tokens of one class (planted) and ``n_decoys`` value tokens of other,
    distinct classes (one each); label = the class that occurs twice. Neither planted token alone decides
    the label (a single value token of a class is what the decoys are).
    """

    n_planted: int = 1
    n_classes: int = 4
    values_per_class: int = 2
    vocab_size: int = 64
    length: int = 16  # including [CLS] and [EOS]
    n_decoys: int = 2  # used when n_planted == 2

    first_value = 3

    @property
    def n_values(self) -> int:
        return self.n_classes * self.values_per_class

    @property
    def first_distractor(self) -> int:
        return self.first_value + self.n_values

    def token_class(self, ids: torch.Tensor) -> torch.Tensor:
        """The class of each value token, -1 for any other token."""
        value = (ids >= self.first_value) & (ids < self.first_distractor)
        return torch.where(value, (ids - self.first_value) // self.values_per_class, -1)

    def label(self, ids: torch.Tensor) -> torch.Tensor:
        """The label of each sequence from its value tokens: the class that occurs most often."""
        classes = self.token_class(ids)
        counts = torch.stack([(classes == c).sum(-1) for c in range(self.n_classes)], -1)
        return counts.argmax(-1)


@dataclass(frozen=True)
class TokenData:
    """``ids (n, length)``, ``y (n,)``, ``planted (n, length)`` bool (the planted positions)."""

    ids: torch.Tensor
    y: torch.Tensor
    planted: torch.Tensor


def planted_tokens(task: TokenTask, n: int, seed: int) -> TokenData:
    """``n`` sequences ``[CLS] t_1 .. t_{length-2} [EOS]``: distractors drawn uniformly from the distractor
    ids; at distinct random content positions the planted value token(s) of a uniform class ``y`` (ids
    uniform within the class) and, for ``n_planted = 2``, one value token of each of ``n_decoys`` other
    classes (distinct, uniform). The label is ``y``."""
    if task.n_planted not in (1, 2):
        raise ValueError("n_planted must be 1 or 2")
    n_decoys = task.n_decoys if task.n_planted == 2 else 0
    if n_decoys >= task.n_classes:
        raise ValueError("n_decoys must be below n_classes")
    g = torch.Generator().manual_seed(seed)
    content = task.length - 2
    ids = torch.randint(task.first_distractor, task.vocab_size, (n, content), generator=g)
    positions = torch.rand(n, content, generator=g).argsort(-1)[:, :task.n_planted + n_decoys]
    y = torch.randint(0, task.n_classes, (n,), generator=g)
    # decoy classes: y + a distinct non-zero offset each (mod n_classes)
    offsets = 1 + torch.rand(n, task.n_classes - 1, generator=g).argsort(-1)[:, :n_decoys]
    classes = torch.cat([y.view(-1, 1).expand(-1, task.n_planted), (y.view(-1, 1) + offsets) % task.n_classes], 1)
    within = torch.randint(0, task.values_per_class, classes.shape, generator=g)
    ids.scatter_(1, positions, task.first_value + classes * task.values_per_class + within)
    planted = torch.zeros(n, content, dtype=torch.bool)
    planted.scatter_(1, positions[:, :task.n_planted], True)
    ids = torch.cat([torch.full((n, 1), CLS), ids, torch.full((n, 1), EOS)], 1)
    return TokenData(ids, y, F.pad(planted, [1, 1]))
