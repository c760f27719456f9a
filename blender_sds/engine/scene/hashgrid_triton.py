"""The hash-grid encoding as two fused Triton kernels, for CUDA.

The plain PyTorch path (field._Encode) runs ~20 aten ops a call and keeps every point's
corner indices and weights (~1.5 KB a point) for the backward. Here the forward is one
kernel launch for all levels and all 8 corners, and the backward one atomic-add kernel
into the table's gradient that recomputes the corners from the positions, so nothing per
corner is stored. Corners, weights and indices follow HashGrid.corners op for op, so the
two paths pick the same table rows; only the float summation order differs.

Triton is optional: without it (or without CUDA) `available` says False and the engine
keeps the PyTorch path. TRITON_INTERPRET=1 runs the kernels on the CPU (for tests).
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except Exception:  # not installed, or a broken install: the PyTorch path serves
    triton = None

# triton.jit picks the interpreter when the kernels are defined (this module's import), so
# the variable's value then, not now, decides whether CPU tensors can run them.
INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET") == "1"
# Points per program: one per thread with 4 warps on a GPU. The interpreter pays ~0.2 ms of
# Python per op whatever the block's size, so there big blocks keep the tests to seconds.
BLOCK = 1024 if INTERPRETED else 128
# No FMA contraction: frac = x * res - floor(x * res) then rounds as in HashGrid.corners (a
# fused one can come out just below 0), so the weights match torch's bit for bit. The
# kernels are gather bound, so the few unfused multiply-adds should cost little.
LAUNCH = {"num_warps": 4, "enable_fp_fusion": False}


def available(device) -> bool:
    """Whether the Triton kernels can run for tensors on `device` (never raises)."""
    if triton is None:
        return False
    return torch.device(device).type == "cuda" or INTERPRETED


if triton is not None:

    @triton.jit
    def _corner(tx0, tx1, ty0, ty1, tz0, tz1, wx0, wx1, wy0, wy1, wz0, wz1, dense, offset,
                CORNER: tl.constexpr):
        """Table row and trilinear weight of one cell corner (x-major, z fastest, as HashGrid.corners)."""
        if (CORNER >> 2) & 1:
            tx, wx = tx1, wx1
        else:
            tx, wx = tx0, wx0
        if (CORNER >> 1) & 1:
            ty, wy = ty1, wy1
        else:
            ty, wy = ty0, wy0
        if CORNER & 1:
            tz, wz = tz1, wz1
        else:
            tz, wz = tz0, wz0
        index = tl.where(dense, tx + ty + tz, tx ^ ty ^ tz) + offset
        return index, wx * wy * wz

    @triton.jit
    def _axis(x_ptr, points, valid, axis: tl.constexpr, scale, last, multiplier, hash_mask):
        """One axis of a point's cell: the low/high corner's index term and weight.

        Same ops as HashGrid.corners: clamp, scale in float32, floor, clamp the cell to the
        last one, int64 product with the level's multiplier, mask to the power-of-two table.
        """
        x = tl.load(x_ptr + points * 3 + axis, mask=valid, other=0.0)
        x = tl.minimum(tl.maximum(x, 0.0), 1.0)
        scaled = x * scale
        base = tl.minimum(tl.floor(scaled).to(tl.int64), last)
        frac = scaled - base.to(tl.float32)
        t0 = (base * multiplier) & hash_mask
        t1 = ((base + 1) * multiplier) & hash_mask
        return t0, t1, 1.0 - frac, frac

    @triton.jit
    def _cell(x_ptr, points, valid, level, scale_ptr, last_ptr, mult_ptr, offset_ptr, dense_bits, hash_mask):
        scale = tl.load(scale_ptr + level)
        last = tl.load(last_ptr + level)
        tx0, tx1, wx0, wx1 = _axis(x_ptr, points, valid, 0, scale, last, tl.load(mult_ptr + level * 3 + 0), hash_mask)
        ty0, ty1, wy0, wy1 = _axis(x_ptr, points, valid, 1, scale, last, tl.load(mult_ptr + level * 3 + 1), hash_mask)
        tz0, tz1, wz0, wz1 = _axis(x_ptr, points, valid, 2, scale, last, tl.load(mult_ptr + level * 3 + 2), hash_mask)
        dense = ((dense_bits >> level) & 1) != 0
        offset = tl.load(offset_ptr + level)
        return tx0, tx1, ty0, ty1, tz0, tz1, wx0, wx1, wy0, wy1, wz0, wz1, dense, offset

    @triton.jit
    def _forward_kernel(table_ptr, x_ptr, out_ptr, scale_ptr, last_ptr, mult_ptr, offset_ptr,
                        n, levels, dense_bits, hash_mask,
                        F: tl.constexpr, F_PAD: tl.constexpr, BLOCK: tl.constexpr):
        level = tl.program_id(1)
        points = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # int64: N*L*F may pass 2^31
        valid = points < n
        feats = tl.arange(0, F_PAD)
        mask = valid[:, None] & (feats[None, :] < F)
        tx0, tx1, ty0, ty1, tz0, tz1, wx0, wx1, wy0, wy1, wz0, wz1, dense, offset = _cell(
            x_ptr, points, valid, level, scale_ptr, last_ptr, mult_ptr, offset_ptr, dense_bits, hash_mask)
        acc = tl.zeros((BLOCK, F_PAD), dtype=tl.float32)
        for corner in tl.static_range(8):
            index, w = _corner(tx0, tx1, ty0, ty1, tz0, tz1, wx0, wx1, wy0, wy1, wz0, wz1, dense, offset, corner)
            values = tl.load(table_ptr + index[:, None] * F + feats[None, :], mask=mask, other=0.0)
            acc += w[:, None] * values.to(tl.float32)
        rows = points * levels + level
        tl.store(out_ptr + rows[:, None] * F + feats[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _backward_kernel(grad_table_ptr, x_ptr, grad_out_ptr, scale_ptr, last_ptr, mult_ptr, offset_ptr,
                         n, levels, dense_bits, hash_mask,
                         F: tl.constexpr, F_PAD: tl.constexpr, BLOCK: tl.constexpr):
        level = tl.program_id(1)
        points = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        valid = points < n
        feats = tl.arange(0, F_PAD)
        mask = valid[:, None] & (feats[None, :] < F)
        tx0, tx1, ty0, ty1, tz0, tz1, wx0, wx1, wy0, wy1, wz0, wz1, dense, offset = _cell(
            x_ptr, points, valid, level, scale_ptr, last_ptr, mult_ptr, offset_ptr, dense_bits, hash_mask)
        rows = points * levels + level
        grad = tl.load(grad_out_ptr + rows[:, None] * F + feats[None, :], mask=mask, other=0.0).to(tl.float32)
        for corner in tl.static_range(8):
            index, w = _corner(tx0, tx1, ty0, ty1, tz0, tz1, wx0, wx1, wy0, wy1, wz0, wz1, dense, offset, corner)
            tl.atomic_add(grad_table_ptr + index[:, None] * F + feats[None, :], w[:, None] * grad, mask=mask,
                          sem="relaxed")


def _level_args(grid, device) -> tuple:
    """The grid's per-level constants: device buffers, plus the dense flags as one int's bits
    (a kernel argument, so no host-to-device copy per call)."""
    if grid.levels > 62:
        raise ValueError("the Triton encoding packs the dense flags into an int64: at most 62 levels")
    dense_bits = sum(1 << level for level, dense in enumerate(grid.dense) if dense)
    buffers = (grid.level_scale, grid.level_last, grid.level_multipliers.contiguous(), grid.level_offsets)
    if any(b.device != device for b in buffers):
        raise ValueError(f"the hash grid's buffers are on {buffers[0].device}, the points on {device}")
    return (*buffers, grid.levels, dense_bits, grid.table_size - 1)


def _launch_grid(n: int, levels: int) -> tuple:
    return (triton.cdiv(n, BLOCK), levels)


class TritonEncode(torch.autograd.Function):
    """Drop-in for field._Encode: (table, x (N,3) in [0,1], grid) -> (N, L, F) in table.dtype.

    Only the table gets a gradient (as in _Encode); the backward keeps just the positions
    and recomputes the corners, so memory is 12 bytes a point whatever the level count.
    """

    @staticmethod
    def forward(ctx, table, x, grid):
        if not available(x.device):
            raise RuntimeError("the Triton hash-grid encoding needs triton and a CUDA device "
                               "(or TRITON_INTERPRET=1 for the CPU interpreter)")
        x = x.detach().to(torch.float32).contiguous()
        table_c = table.detach().contiguous()
        n, features = x.shape[0], table.shape[1]
        scale, last, mult, offsets, levels, dense_bits, hash_mask = _level_args(grid, x.device)
        out = torch.empty(n, levels, features, dtype=table.dtype, device=x.device)
        if n:
            _forward_kernel[_launch_grid(n, levels)](
                table_c, x, out, scale, last, mult, offsets, n, levels, dense_bits, hash_mask,
                F=features, F_PAD=triton.next_power_of_2(features), BLOCK=BLOCK, **LAUNCH)
        ctx.grid, ctx.table_shape, ctx.table_dtype = grid, table.shape, table.dtype
        ctx.save_for_backward(x)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if not ctx.needs_input_grad[0]:
            return None, None, None
        (x,) = ctx.saved_tensors
        grid, (rows, features) = ctx.grid, ctx.table_shape
        grad_out = grad_out.to(torch.float32).contiguous()  # autograd may hand an expanded view
        grad = torch.zeros(rows, features, dtype=torch.float32, device=grad_out.device)
        scale, last, mult, offsets, levels, dense_bits, hash_mask = _level_args(grid, x.device)
        n = x.shape[0]
        if n:
            _backward_kernel[_launch_grid(n, levels)](
                grad, x, grad_out, scale, last, mult, offsets, n, levels, dense_bits, hash_mask,
                F=features, F_PAD=triton.next_power_of_2(features), BLOCK=BLOCK, **LAUNCH)
        return grad.to(ctx.table_dtype), None, None
