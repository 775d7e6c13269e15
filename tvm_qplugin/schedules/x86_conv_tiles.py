"""Register tiles of the tensorized x86 convs (schedules/x86_int8.py's ``Conv2DTensorized``):
how many output channels and pixel vectors one tile of accumulators holds, and where the tile
lives. Pure arithmetic on the layer's shape and the dot instruction, measured choices documented
where they are made; kept apart from the rule so the rule stays about the schedule."""
from __future__ import annotations

from .intrin_x86 import AVX2, DotIsa


def _round_up(v: int, m: int) -> int:
    return -(-v // m) * m


def _largest_divisor(n: int, choices) -> int:
    return next(c for c in choices if n % c == 0)


# TVM puts a CPU buffer on the stack only if it is in the "global" scope and smaller than this
# (runtime::kMaxStackAlloca); any other buffer is a TVMBackendAllocWorkspace call where it lives
STACK_BYTES = 1024
LONG_K_STEPS = 160  # dot steps per tile from which the bigger, workspace-allocated tile wins


# AVX2 vpmaddwd convs on planes of at most this many pixel vectors, whose packed activations fit in
# this many bytes (L1: every channel re-reads them), take the whole plane as the tile
WHOLE_PLANE_VECTORS = 7
WHOLE_PLANE_BYTES = 24 * 1024


def _conv_tile(o: int, p: int, isa: DotIsa, k_steps: int) -> tuple[int, int, str]:
    """``(mr, nr, acc_scope)`` of the pixel-lane conv's register tile: ``nr`` pixel vectors (2
    where the plane fills whole pairs of vectors, else 1) and :func:`_conv_tile_rows`' channels.

    On AVX2's ``vpmaddwd`` (int16 activations, or 8-bit ones whose byte pairs could saturate) a
    plane of at most :data:`WHOLE_PLANE_VECTORS` vectors is one tile row instead: one output
    channel, every pixel vector of the plane (``1 x 7`` for 7x7: one weight broadcast per 7
    multiplies, one channel's constants per epilogue, one contiguous output row), as long as the
    packed plane (``K x P`` int16, re-read for every channel) stays in L1
    (:data:`WHOLE_PLANE_BYTES`). Measured on a Zen 3 (1 thread, thread CPU time, interleaved):
    MobileNetV2's int16 160 -> 960 at 7x7 (18 KB packed) 239 -> 155 us; 320 -> 1280 (36 KB) ran
    518 us either way; ``vpmaddubsw`` kernels and 14x14+ planes were no faster so.
    An odd number of pixel vectors that 5 divides (14x14: 25) takes ``2 x 5`` instead of ``12 x 1``
    (10 accumulators, 5 pixel vectors and a broadcast: the 16 ymm registers; 2 broadcasts per 10
    multiplies instead of 12 per 12): int16 96 -> 576 at 14x14 321 -> 280 us, 64 -> 384
    163 -> 144 us; the ``vpmaddubsw`` 576 -> 96 ran 164 -> 180 so, and keeps its tile."""
    vectors = _round_up(p, isa.lanes) // isa.lanes
    packed_bytes = k_steps * isa.kp * vectors * isa.lanes * 2
    if isa is AVX2 and vectors <= WHOLE_PLANE_VECTORS and packed_bytes <= WHOLE_PLANE_BYTES:
        return 1, vectors, "global"
    if isa is AVX2 and vectors % 2 and vectors % 5 == 0:
        return _largest_divisor(o, (2, 1)), 5, "global"
    nr = 2 if _round_up(p, 2 * isa.lanes) == _round_up(p, isa.lanes) else 1
    mr, acc_scope = _conv_tile_rows(o, nr, isa, k_steps)
    return mr, nr, acc_scope


def _conv_tile_rows(o: int, nr: int, isa: DotIsa, k_steps: int) -> tuple[int, str]:
    """Output channels per tile (``mr``, a divisor of ``o``) and the scope of the ``mr x nr``
    accumulator tile.

    The tile lives under the parallel tile loop, so its buffer is allocated once per tile: a
    stack slot when it is a "global" buffer under :data:`STACK_BYTES` (LLVM keeps the vectors in
    registers over the K loop either way; the slot only holds them for the epilogue), else a
    workspace call per tile. With 512-bit vectors the stack bound allows 15 accumulators (e.g.
    7 x 2) instead of 24 (12 x 2): fewer broadcasts reused, but no allocation per tile --
    MobileNetV2's thin layers 1.05-1.27x faster, the long ones (``LONG_K_STEPS`` dot steps and
    more amortize the allocation) 2-6 % slower, so those keep the big tile (``local``). 256-bit
    tiles are bounded by the 16 ymm registers (12 accumulators) long before the stack bound."""
    if isa.vector_bits == 512 and k_steps >= LONG_K_STEPS:
        return _largest_divisor(o, (12, 8, 6, 4, 3, 2, 1) if nr == 2 else (16, 12, 8, 6, 4, 3, 2, 1)), "local"
    under_stack_bound = STACK_BYTES // (isa.vector_bits // 8) - 1
    accumulators = min(under_stack_bound, 15 if isa.vector_bits == 512 else 12)
    return _largest_divisor(o, range(accumulators // nr, 0, -1)), "global"
