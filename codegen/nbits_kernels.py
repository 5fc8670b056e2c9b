"""The CPU schedule of weight-only 4-bit matmuls (`optc.MatMulNBits`, lowered in `lowering/ops/nbits.py` to a
decode stage W[K, N] = (code - zero point) * scale and a float32 matmul reading it).

Few rows (matrix x vector, token-by-token decoding): ``NBitsMatMul`` declines and ``schedules.TiledReduction``
inlines the decode into the matmul's inner loop: each weight is decoded once, where it is used; the weight streams
from memory at half a byte per element instead of four.

From ``PANEL_MIN_ROWS`` rows on, decoding in the inner loop would repeat it for every tile of rows, so this rule
decodes one column panel (all K rows x one register tile's width of columns) into a float32 buffer, then runs
every row tile of the matmul over it, exactly as ``TiledReduction`` runs a float32 matmul over a prepacked panel:
the panel loop is the outer (parallel) loop, the u_m x u_n register tile accumulates over all of K, the epilogue
(bias, activation) is computed per tile. The decode costs K x N element operations once per call instead of once
per row tile, and the panel (K x 32 floats: 96 KiB at K = 768) stays in the L2 cache while the row tiles read it.
The packed codes, scales and zero points are read by the decode only (streamed once per call).
"""

from __future__ import annotations

import math

from tvm import s_tir
from tvm.target import Target

from ..lowering.ops.nbits import DECODE_ATTR
from .schedules import MAX_TILE_ROWS, _extent, _Rule, _vector_lanes, _vectorize_innermost, max_accumulators, tile_rows

#: from this many rows on the weight is decoded per column panel (below, inside the matmul's inner loop)
PANEL_MIN_ROWS = 4


def _decode_block(sch: s_tir.Schedule):
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    found = [b for b in blocks if DECODE_ATTR in sch.get(b).annotations]
    return found[0] if len(found) == 1 else None


class NBitsMatMul(_Rule):
    """Panel-decoded schedule of a weight-only 4-bit matmul with at least PANEL_MIN_ROWS rows (module docstring)."""

    def schedule(self, func, target: Target):  # noqa: C901 (one linear recipe)
        sch = s_tir.Schedule(func)
        decode = _decode_block(sch)
        if decode is None:
            return None
        consumers = sch.get_consumers(decode)
        if len(consumers) != 1:
            return None
        main = consumers[0]
        stmt = sch.get(main)
        kinds = ["R" if iv.iter_type == 2 else "S" for iv in stmt.iter_vars]
        n_s = kinds.index("R") if "R" in kinds else len(kinds)
        if n_s < 2 or n_s == len(kinds) or any(k != "R" for k in kinds[n_s:]):
            return None
        blocks = list(sch.get_child_blocks(sch.get_sblock("root")))
        later = blocks[[sch.get(b).same_as(stmt) for b in blocks].index(True) + 1:]
        loops = sch.get_loops(main)
        s_loops, r_loops = loops[:n_s], loops[n_s:]
        extents = [_extent(sch, lp) for lp in s_loops]
        if any(e is None for e in extents):
            return None
        rows, n_ext = math.prod(extents[:-1]), extents[-1]
        if rows < PANEL_MIN_ROWS:
            return None  # TiledReduction: the decode inlined into the inner loop
        lanes = _vector_lanes(target, 32)
        if n_ext % lanes:
            return None
        u_n = 2 if n_ext % (2 * lanes) == 0 else 1
        m_ext = extents[-2]
        reduction = math.prod(_extent(sch, lp) or 1 for lp in r_loops)
        u_m = tile_rows(m_ext, min(MAX_TILE_ROWS, max_accumulators(lanes * 4, reduction) // u_n))
        # the batch loops stay whole (a row tile never straddles two batch elements: fused, the tile's write-back
        # region was a box over both and wrote rows of the next element before they were computed), inside the
        # panel loop so that one decoded panel serves every batch element
        n_o, n_u, n_v = sch.split(s_loops[-1], factors=[None, u_n, lanes])
        m_o, m_i = sch.split(s_loops[-2], factors=[None, u_m])
        sch.reorder(n_o, *s_loops[:-2], m_o, *r_loops, m_i, n_u, n_v)
        sch.parallel(n_o)
        sch.compute_at(decode, n_o, preserve_unit_loops=True)
        # the decode: rows of one panel, vectorized along its columns
        _vectorize_innermost(sch, decode, lanes, keep_outer=1)
        if later:
            for epi in later:
                sch.reverse_compute_at(epi, m_o, preserve_unit_loops=True)
        else:
            later = [sch.cache_write(main, 0, "global")]
            sch.reverse_compute_at(later[0], m_o, preserve_unit_loops=True)
        sch.unroll(m_i)
        sch.unroll(n_u)
        sch.vectorize(n_v)
        init = sch.decompose_reduction(main, r_loops[0])
        init_loops = sch.get_loops(init)
        for lp in init_loops[n_s:-1]:
            sch.unroll(lp)
        sch.vectorize(init_loops[-1])
        for epi in later:
            _vectorize_innermost(sch, epi, lanes, keep_outer=n_s)
        return sch
