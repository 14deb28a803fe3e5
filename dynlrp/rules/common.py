"""Small numeric helpers shared by the rule families."""
from __future__ import annotations

import torch


def stabilize(z: torch.Tensor, epsilon: float, out: torch.Tensor | None = None) -> torch.Tensor:
    """``s(z) = z + epsilon * sign(z)`` with ``sign(+0) = sign(-0) = +1`` (zennit's convention), so
    ``|s| >= epsilon``, as a new tensor (or into ``out``, of ``z``'s shape and dtype): ``copysign(epsilon,
    z + 0) + z`` (``-0 + 0 = +0`` in IEEE arithmetic). Three passes, no comparison mask (on CPU ``sign``
    and ``where`` cost several times an add: this was 6x faster than ``sign(sign(z) + 1/2)``)."""
    if not z.is_floating_point():
        return z + epsilon * (torch.sign(z) + 0.5).sign()
    s = torch.add(z, 0.0, out=out)
    torch.copysign(torch.full((), epsilon, dtype=z.dtype, device=z.device), s, out=s)
    return s.add_(z)


def broadcasts_into(shape: torch.Size | tuple[int, ...], target: torch.Size | tuple[int, ...]) -> bool:
    """Whether a tensor of ``shape`` broadcasts against one of ``target`` to ``target`` (an in-place op
    on the ``target`` tensor keeps its shape). Plain Python: ``torch.broadcast_shapes`` costs ~50 us."""
    if shape == target:
        return True
    return len(shape) <= len(target) and all(
        have in (1, want) for have, want in zip(reversed(shape), reversed(target)))


def divide(relevance: torch.Tensor, z: torch.Tensor, epsilon: float,
           overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c, stabiliser)``: ``c = R / s(z)`` and the stabiliser's share ``sum (s - z) c`` (what the
    stabiliser keeps from the inputs), computed with ``s - z`` as rounded. ``c`` is always the caller's
    own tensor (it may be scaled in place). ``overwrite``: ``z`` is the caller's own temporary, and its
    buffer is reused.

    Large contiguous operands of one shape are divided blockwise (:func:`_divide_blocks`): ``s``,
    ``s - z`` (and :func:`divide_selected`'s mask) live in block-sized buffers and only ``c`` is
    output-sized (on CPU a fresh output-sized buffer costs its page faults; 6.4M float32 elements:
    6.7 ms blockwise, 8 to 23 ms whole, as the allocator does or does not reuse memory)."""
    c, lost, _ = _divide(relevance, z, epsilon, overwrite, None)
    return c, lost


def divide_selected(relevance: torch.Tensor, z: torch.Tensor, epsilon: float, y: torch.Tensor, positive: bool,
                    overwrite: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`divide` on the outputs where ``y > 0`` (``positive``; else ``y < 0``) only: ``c = R / s(z)``
    there and 0 elsewhere, the stabiliser's share of that ``c``, and ``kept = sum R`` there (the
    relevance the selection keeps). One selection mask, taken before ``c`` may take ``z``'s buffer
    (``y`` may be ``z``), serves ``c`` and ``kept``; blockwise, one of block size."""
    return _divide(relevance, z, epsilon, overwrite, (y, positive))


def _divide(relevance: torch.Tensor, z: torch.Tensor, epsilon: float, overwrite: bool,
            select: tuple[torch.Tensor, bool] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    if _blockwise_divide(relevance, z, select):
        return _divide_blocks(relevance, z, epsilon, overwrite and not z.requires_grad, select)
    mask = None if select is None else sign_mask(*select)
    s = stabilize(z, epsilon)
    if overwrite and z.is_floating_point() and not z.requires_grad:
        lost = torch.sub(s, z, out=z)
    else:
        lost = s - z
    c = torch.div(relevance, s, out=s) if broadcasts_into(relevance.shape, s.shape) and (
        s.dtype == torch.promote_types(s.dtype, relevance.dtype)) else relevance / s
    if mask is None:
        return c, dot(lost, c), None
    c = c.mul_(mask) if broadcasts_into(mask.shape, c.shape) and c.dtype == mask.dtype else c * mask
    return c, dot(lost, c), dot(relevance, mask)


def _blockwise_divide(relevance: torch.Tensor, z: torch.Tensor, select) -> bool:
    return (z.is_floating_point() and _blockwise_pair(relevance, z)
            and (select is None or _blockwise_pair(select[0], z)))


def _divide_blocks(relevance: torch.Tensor, z: torch.Tensor, epsilon: float, overwrite: bool,
                   select: tuple[torch.Tensor, bool] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """:func:`_divide` block by block: per block ``s = s(z)``, ``lost = s - z``, the selection mask of
    ``y`` (before ``c`` is written: ``c`` may take ``z``'s buffer, and ``y`` may be ``z``), ``c = R / s``,
    ``dot(lost, c)`` and ``dot(R, mask)``. The same ``c`` as the whole-tensor path, bit for bit."""
    c = z if overwrite else torch.empty_like(z)
    y = () if select is None else (select[0],)
    parts, kept = [], []
    for z_block, r_block, c_block, *rest in _blocks(z, relevance, c, *y, dtype=z.dtype, buffers=3):
        *y_block, s, lost, mask = rest
        stabilize(z_block, epsilon, out=s)
        torch.sub(s, z_block, out=lost)
        if select is not None:
            sign_mask(y_block[0], select[1], mask)
            kept.append(dot(r_block, mask))
        torch.div(r_block, s, out=c_block)
        if select is not None:
            c_block.mul_(mask)
        parts.append(dot(lost, c_block))
    return c, torch.stack(parts).sum(), torch.stack(kept).sum() if kept else None


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``total(a * b)`` without the product tensor (one BLAS dot where the layouts allow it)."""
    if (a.shape == b.shape and a.dtype == b.dtype and a.dtype in (torch.float32, torch.float64)
            and a.is_contiguous() and b.is_contiguous()):
        return torch.dot(a if a.dim() == 1 else a.view(-1), b if b.dim() == 1 else b.view(-1))
    return total(a * b)


def reduce_to_shape(t: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Sum ``t`` over the dimensions that broadcasting added or expanded to reach ``t.shape``."""
    shape = torch.Size(shape)
    if t.shape == shape:
        return t
    lead = t.dim() - len(shape)
    if lead > 0:
        t = t.sum(dim=tuple(range(lead)))
    dims = tuple(i for i, (have, want) in enumerate(zip(t.shape, shape)) if want == 1 and have != 1)
    if dims:
        t = t.sum(dim=dims, keepdim=True)
    return t.reshape(shape)


def total(t: torch.Tensor) -> torch.Tensor:
    """Sum for the ledger, as a 0-dim tensor (read out as float64 at the end of the sweep): in the
    tensor's own precision for float32 / float64 (pairwise summation, rounding of order
    ``eps * log n * sum |t|``, the scale the audit measures errors on), accumulated in float32 for
    half types. No float64 copy: casting every relevance tensor cost about 5x its float32 sum."""
    t = t.detach() if t.requires_grad else t
    return t.sum(dtype=torch.float32) if t.dtype in (torch.float16, torch.bfloat16) else t.sum()


#: elements per block of the blockwise kernels (1 MiB of float32)
BLOCK = 1 << 18
#: a tensor is taken blockwise above this many elements (4 MiB of float32): below it, fresh whole-tensor
#: temporaries cost less than the blocks' extra kernel calls (measured on CPU: divide 0.36 vs 0.66 ms at
#: 0.8M elements, 1.57 vs 1.33 ms at 1.6M)
BLOCKWISE_ABOVE = 4 * BLOCK


def _blocks(*tensors: torch.Tensor, dtype: torch.dtype, buffers: int = 1):
    """Aligned blocks of :data:`BLOCK` elements of contiguous tensors of one shape, each with the
    matching slices of ``buffers`` buffers of one ``dtype`` (reused from block to block)."""
    flats = [t.view(-1) for t in tensors]
    size = min(BLOCK, flats[0].numel())
    scratch = [torch.empty(size, dtype=dtype, device=tensors[0].device) for _ in range(buffers)]
    for start in range(0, flats[0].numel(), BLOCK):
        blocks = [f[start:start + BLOCK] for f in flats]
        yield (*blocks, *(b[:blocks[0].numel()] for b in scratch))


def _blockwise(t: torch.Tensor, reduce, dtype: torch.dtype) -> torch.Tensor:
    """``sum_k reduce(block_k, buffer)`` over blocks of :data:`BLOCK` elements of a contiguous ``t``,
    every block written into one ``dtype`` buffer: no temporary of ``t``'s size."""
    return torch.stack([reduce(block, out) for block, out in _blocks(t, dtype=dtype)]).sum()


def _large(t: torch.Tensor) -> bool:
    return t.numel() > BLOCKWISE_ABOVE and t.is_contiguous()


def sign_mask(y: torch.Tensor, positive: bool, out: torch.Tensor | None = None) -> torch.Tensor:
    """1 where ``y > 0`` (``positive``) or ``y < 0``, else 0, in ``y``'s dtype (arithmetic: a
    comparison mask and its conversion are several times slower on CPU)."""
    part = torch.clamp(y, min=0, out=out) if positive else torch.clamp(y, max=0, out=out)
    return part.sign_().abs_()


def _blockwise_pair(t: torch.Tensor, y: torch.Tensor) -> bool:
    return _large(t) and t.shape == y.shape and t.dtype == y.dtype and y.is_contiguous()


def zero_where_zero(t: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether ``t`` is zero wherever the non-negative ``y`` is: ``sum |t| (1 - sign(y)) == 0``, by
    arithmetic (comparison masks are slow on CPU), blockwise for large tensors of one layout."""
    def missed(block: torch.Tensor, y_block: torch.Tensor, *out: torch.Tensor) -> torch.Tensor:
        return dot(torch.abs(block, out=out[0] if out else None),
                   torch.sign(y_block, out=out[1] if out else None).neg_().add_(1))
    if not _blockwise_pair(t, y):
        return float(missed(t, y)) == 0.0
    return float(torch.stack([missed(*blocks) for blocks in _blocks(t, y, dtype=y.dtype, buffers=2)]).sum()) == 0.0


def abs_total(t: torch.Tensor) -> torch.Tensor:
    """``sum |t|`` (the scale of rounding errors in the ledger), float32 accumulation for half types.
    ``abs().sum()`` (``torch.linalg.vector_norm(t, 1)`` is about 4x slower on CPU), blockwise for
    large tensors, so that the ledger never allocates a tensor of ``t``'s size (an LM head's
    relevance is ``tokens x vocabulary``)."""
    t = t.detach() if t.requires_grad else t
    if not _large(t):
        return total(t.abs())
    return _blockwise(t, lambda block, out: total(torch.abs(block, out=out)), t.dtype)


def totals(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(total(t), abs_total(t))`` (a ledger entry: the sum and the flow) in one read of ``t``: a
    large tensor block by block, each block summed as it is and as ``|block|`` while it is in cache."""
    t = t.detach() if t.requires_grad else t
    if not _large(t):
        return total(t), total(t.abs())
    sums, flows = [], []
    for block, out in _blocks(t, dtype=t.dtype):
        sums.append(total(block))
        flows.append(total(torch.abs(block, out=out)))
    return torch.stack(sums).sum(), torch.stack(flows).sum()


def wide_total(t: torch.Tensor) -> torch.Tensor:
    """``sum t`` accumulated in float64 (the whole-model totals: the seeded relevance is compared with
    float64 input relevances), blockwise for large tensors: ``t.sum(dtype=float64)`` and a float64
    copy both allocate a float64 tensor of ``t``'s size on CPU."""
    t = t.detach() if t.requires_grad else t
    if t.dtype == torch.float64 or not t.is_floating_point():
        return t.sum(dtype=torch.float64)
    if not _large(t):
        return t.to(torch.float64).sum()
    return _blockwise(t, lambda block, out: out.copy_(block).sum(), torch.float64)


def broadcast_total(small: torch.Tensor, big: torch.Tensor) -> torch.Tensor:
    """``total(small * big)`` for ``small`` broadcasting against ``big`` (a bias against the output):
    ``big`` is first summed down to ``small``'s shape, so no output-sized product is formed."""
    if not broadcasts_into(small.shape, big.shape):
        return total(small * big)
    return total(small * reduce_to_shape(big, small.shape))


def z_rule(x: torch.Tensor, z: torch.Tensor, relevance: torch.Tensor, vjp, epsilon: float):
    """The z-rule for a homogeneous linear map ``z = f(x)``: ``R_x = x * f^T(R / s(z))``.

    Returns ``(R_x, absorbed stabiliser)``, the latter ``sum (s - z) R / s``.
    """
    c, lost = divide(relevance, z, epsilon)
    return x * vjp(c), lost
