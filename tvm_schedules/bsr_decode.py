"""BSR int-k GEMV for decode on CUDA (M = 1..8 token rows): one warp per block row.

Decode reads every kept weight byte once and does little arithmetic per byte, so the kernel is about
moving bytes. A warp owns one block row; its lanes take consecutive kept blocks, ``lanes`` lanes per
block, each lane a contiguous slice of the block's G columns, so every load of codes, scales, zero points
and indices is coalesced across the warp. The one scattered access is the activation gather (each block
sits at its own column): the thread block stages the M x K activations in shared memory once (where they
fit in 48 KB) and loops over many block rows, and a lane gathers a whole 16-byte vector at a time. Measured
on an H100 (docs/perf.md), the gather's transactions bound M >= 4, where two lanes per block halve them,
and where the activations are staged group-major and each lane walks the tokens in an order rotated by its
block's slot in the quarter-warp, so that the quarter-warp's four blocks, at random columns, never share a
shared-memory bank (M = 8: 1.17-1.37x faster on the K = 4096 shapes).
Loads use a clamped index and a 0/1 scale instead of a branch, and a store that needs every loaded word
makes a trip's loads issue together. CUDA artifacts pack each block's column, zero point and scale into one
32-bit word (BSRShape.packed): one load instead of three, 12 bytes a block instead of 13 (H100: 1.03-1.15x
faster at M = 1). Up to 12672 rows at M = 1 (but for 6337-8448), and up to 6336 at M = 2, the grid's thread
blocks are all resident at once on an H100 (for_shape), and a warp's first trip of loads goes out before the
activations are staged and before the PDL wait (``ahead``): the weights stream while the kernel before still
runs. Rows with more blocks loop longer; unequal rows (per-layer sparsity) cost up to ~40%. ``plan=True``
gives rows to warps by a per-matrix longest-first plan appended to indptr (tvm_schedules.warp_plan; measured:
median loss +30% -> +17%), not yet used by gqsa-compile; bsr_decode_stream splits kept blocks instead of rows
(unequal rows cost it -1% to +13%, kernels_stream6_h100.json, but it is slower on balanced ones), and
gqsa-compile runs it on large matrices with unequal rows.

Arithmetic: with 4-bit codes in the interleaved order (tvm_schedules.layout) one LOP3 turns a code pair
into the half2 (1024 + c0, 1024 + c1), (c - z) is exact in fp16, the 16 products of a group are summed in
fp16 and everything after that in fp32 (the scale once per group). Other widths go through fp32: a code
becomes an exact float by OR-ing it into the mantissa of 2^23. Partial sums meet in warp shuffles. Tall
blocks with many token rows split a block's R rows over several warps (``rows_per_warp``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from tvm.script import tirx as T

from .common import WEIGHT_HINT, BSRShape, bsr_func, nibble, weight_load, word_column, word_scale_bits, word_zero
from .launch import SMALL_GRID
from .warp_plan import records_at

SMEM_BYTES = 48 * 1024  # static shared memory a thread block may use without an opt-in
MAGIC = 0x4B000000  # bit pattern of 2^23 as fp32: OR-ing an integer c < 2^23 into it gives 2^23 + c exactly


@dataclass(frozen=True)
class DecodeConfig:
    """The tuning knobs (the sweep in benchmarks/kernels.py picks them; the artifact manifest records them)."""

    warps: int = 4  # warps per thread block
    unroll: int = 2  # kept blocks a lane handles per loop trip (independent loads in flight)
    lanes: int = 2  # lanes sharing one block (each a contiguous slice of its columns)
    half2: bool = True  # 4-bit interleaved codes: decode pairs into half2, fp16 products within a group
    smem: bool = True  # stage the activations in shared memory (where M x K x 2 bytes fit in smem_kb)
    ctas: int = 1056  # thread blocks at most (each loops over tasks), so activations are staged once each
    fence: bool = True  # make every load of a trip complete before its math (all of a trip in flight)
    row_budget: int = 16  # M x (block rows per warp) at most: tall blocks split their rows over warps beyond
    smem_kb: int = 48  # stage activations up to this size; beyond 48 KB in dynamic shared memory (opt-in)
    plan: bool = False  # rows to warps by a per-matrix plan appended to indptr (tvm_schedules.warp_plan)
    rotate: bool = False  # staged group-major ([group][token][columns]), each lane walking the tokens from
    # its block's slot in the quarter-warp (M >= 2): the four blocks of a quarter-warp then hit distinct banks
    pdl: bool = False  # programmatic dependent launch (sm_90+, tvm_schedules.launch): this kernel waits for the
    # previous kernel's output before it reads the activations, and lets the next one launch right after the wait
    # where its grid is one wave, else as its thread blocks exit (``trigger``)
    trigger: str = "exit"  # PDL over more than one wave: where the next kernel may launch. "exit": no explicit
    # trigger, a thread block counts once it exits; "block": after a barrier, once all its warps are done; "warp":
    # each thread once its own warp's rows are done, which lets a thread block count while its other warps still
    # walk long rows (H100, unequal rows at M = 1: 1.10x slower than "exit", balanced the same; docs/perf.md);
    # "early": right after the wait, as grids of at most 132 thread blocks do (for grids resident all at once)
    ahead: int = 0  # loads in flight across phases: 1 issues the first trip's loads before the activations are
    # staged (and, with PDL, before the wait: weights never depend on the previous kernel); 2 also issues each
    # next trip's loads before this trip's arithmetic (a second register set: 40 registers at M = 1, not 32).
    # 3 issues each next trip's loads before this trip's have landed, the two sets taking turns (two trips in flight).
    # H100 (docs/perf.md): grids whose thread blocks are all resident gain, with PDL most (SmolLM2's 576 x 576: 2.39
    # -> 1.60 us), larger ones lose (28672 x 4096: 0.74-0.81x); 3 pays only at M = 2 with PDL (for_shape())
    ablate: str = ""  # measurement only, wrong results: "math" keeps every load (and the fence) but no arithmetic;
    # "meta" loads only the codes (indices, scales and zero points become constants), arithmetic unchanged
    hint: str = ""  # cache hints on the weight loads (common.weight_load): "n", "f", "p" or several

    def stages(self, m: int, k: int) -> bool:
        """Whether this configuration stages the M x K fp16 activations in shared memory."""
        return self.smem and m * k * 2 <= max(self.smem_kb * 1024, SMEM_BYTES)

    @property
    def key(self) -> str:
        return f"w{self.warps}u{self.unroll}l{self.lanes}" + ("h" if self.half2 else "") + (
            f"s{self.ctas}" if self.smem else "") + ("f" if self.fence else "") + (
            f"b{self.row_budget}" if self.row_budget != 16 else "") + (
            f"d{self.smem_kb}" if self.smem_kb != 48 else "") + ("r" if self.rotate else "") + (
            "p" if self.plan else "") + ("g" if self.pdl else "") + (
            f"t{self.trigger[0]}" if self.trigger != "exit" else "") + (f"a{self.ahead}" if self.ahead else "") + (
            f"c{self.hint}" if self.hint else "") + (f"_no_{self.ablate}" if self.ablate else "")


DEFAULT = DecodeConfig(lanes=1)
SWEEP = ([DecodeConfig(w, u, ln) for ln in (1, 2) for w in (4, 8) for u in (2, 4, 8)]
         + [DecodeConfig(8, 2, 1, fence=False), DecodeConfig(4, 4, 2, fence=False),
            DecodeConfig(8, 4, 1, smem=False), DecodeConfig(8, 4, 1, half2=False)])
# tall blocks (R = 16): how many of a block's rows one warp takes, lanes per block, blocks per trip
SWEEP_TALL = [DecodeConfig(8, u, ln, row_budget=b) for b in (4, 8, 16) for ln in (1, 2) for u in (1, 2)]
# The sweep's winners on an H100 (benchmarks/kernels.py, tag "sweep": geometric mean over 12288 x 4096 and
# 4096 x 14336, W4 G16 R1 50%): one lane per block while gathers are few (M <= 2), two lanes per block
# (half the transactions per gathered byte) once they dominate (M >= 4). Other archs use the same.
TUNED = {1: DecodeConfig(8, 2, 1), 2: DecodeConfig(8, 2, 1), 4: DecodeConfig(4, 4, 2), 8: DecodeConfig(4, 4, 2)}
# Staging costs M x K x 2 bytes of L2 reads per thread block, so at M = 2 and 4 fewer and larger thread blocks
# that stage the activations win (tag "sweep", all seven shapes, balanced and unequal rows: M = 4 8% faster,
# M = 2 2.5%), up to 92 KB of them in dynamic shared memory (4096 x 14336 at M = 2: 18.4 -> 18.1 us, unequal
# rows 26.5 -> 21.2 us; sm_89 allows 99 KB per thread block). M = 1 is best as it is; at M = 8 staging 64 KB
# row-major in dynamic shared memory gained nothing over the L1-cached gather (geometric mean 1.00, 5 shapes).
# At M = 4 and 8 the staged gathers are laid out group-major and rotated per lane (tag "rotate",
# benchmarks/results/kernels_rotate_h100.json: 12288 x 4096 at M = 8 31.6 -> 24.4 us, M = 4 19.5 -> 17.7 us),
# which also makes staging 64 KB worth it at M = 8. At M = 2 two lanes per block and 4 blocks per trip beat one
# lane (same run, 12288 x 4096: 16.9 -> 14.4 us; 10-19% on all seven shapes, unequal rows -6% to +6%); with
# two tokens, rotation has two bank slots to spread over and changes nothing there.
TUNED_STAGED = {2: DecodeConfig(16, 4, 2, ctas=264, smem_kb=92),
                4: DecodeConfig(32, 4, 2, ctas=132, smem_kb=92, rotate=True),
                8: DecodeConfig(32, 4, 2, ctas=132, smem_kb=92, rotate=True)}


# Tall blocks (R = 16, sweep of SWEEP_TALL): at M <= 2 a warp should take 4 of a block's rows, not all 16
# (12288 x 4096, M = 1: 14.8 vs 21.1 us; 4096 x 14336: 17.5 vs 50.3 us); R = 8 follows R = 16.
TALL = DecodeConfig(8, 2, 1, row_budget=4)


def tuned(m: int, rows: int = 1, k: int = 0) -> DecodeConfig:
    if rows >= 8 and m <= 2:
        return TALL
    if m in TUNED_STAGED and TUNED_STAGED[m].stages(m, k):
        return TUNED_STAGED[m]
    return TUNED.get(m, DEFAULT)


# Registers a thread of the staged half2 GEMV takes when loading ahead, by (M, ahead), as ptxas allots them for
# sm_90 (tests/tvm_schedules/test_launch.py checks the built kernels against them): what decides how many thread
# blocks an SM holds at once, so which grids for_shape() can make resident.
AHEAD_REGISTERS = {(1, 1): 40, (1, 2): 40, (2, 1): 40, (2, 2): 56, (2, 3): 56, (4, 2): 64}
SM_REGISTERS, SM_WARPS = 65536, 64  # sm_80 .. sm_90
# M = 1: where thread blocks of 32 warps, a row each, would keep fewer SMs than this busy, thread blocks of 8 warps
# win (H100, 3072 rows: 1.07-1.28x; 4096 rows, whose 128 thread blocks of 32 warps fill the SMs: 0.68-1.05x)
IDLE_SMS = 0.8


def per_sm(warps: int, registers: int) -> int:
    """Thread blocks of ``warps`` warps an SM holds at ``registers`` registers a thread (allotted in steps of 8)."""
    return min(SM_REGISTERS // (warps * 32 * (-(-registers // 8) * 8)), SM_WARPS // warps)


NO_FENCE_K = 4096  # M = 1: columns from which the fence is left out (for_shape)


def for_shape(s: BSRShape, m: int, pdl: bool = False) -> DecodeConfig:
    """The launch ``resident_launch`` picks, without the fence at M = 1 on 4-bit R = 1 rows of NO_FENCE_K columns
    or more, unless it issues only the first trip ahead (``ahead = 1``). With the weight loads past L1, the fence's
    xor and shared-memory store of every loaded word cost more than keeping a trip's loads together gains there:
    H100, tag "fence" (kernels_fence_run{1,2}_h100.json, balanced and unequal rows), the LLaMA shapes at M = 1
    where the rule applies 1.003-1.077x faster without it plain, 0.999-1.059x with PDL, but 12288 x 4096's two rows
    per warp (``ahead = 1``) 0.86x with PDL. SmolLM2's matrices (K = 576, 1536) keep it: 0.94-1.04x there (its
    down projection with unequal rows and PDL 0.94x); and M >= 2, where it was 0.81-1.15x, shape by shape."""
    cfg = resident_launch(s, m, pdl)
    if m == 1 and s.rows == 1 and s.bits == 4 and s.k >= NO_FENCE_K and cfg.ahead != 1:
        return replace(cfg, fence=False)
    return cfg


def resident_launch(s: BSRShape, m: int, pdl: bool = False) -> DecodeConfig:
    """tuned() (with ``pdl``), and at M = 1 and 2, where the activations are staged, a grid whose thread blocks an
    H100 holds all at once, loading ahead and triggering the next launch right after its wait (its weights stream
    before the staging and the wait, and the next kernel's thread blocks take no slot this one still needs):
    - M = 1 up to 4224 rows, a warp per row in 132 thread blocks of 8, 16 or 32 warps (``ahead = 2``; SmolLM2's
      matrices 1.05-1.07x plain, 1.42-1.49x with PDL; 4096-row LLaMA matrices up to 1.18x, unequal rows 1.28x);
    - M = 1 up to 6336, a warp per row in thread blocks of 8 warps, at most 6 per SM (``ahead = 2``), also where
      thread blocks of 32 warps would leave SMs idle (2113-3379 rows); past 4224 rows with PDL in thread blocks of
      16 warps, 3 per SM, which stage the activations half as often after the wait (long rows: 5120 x 13824 with
      8 warps 0.97-1.01x, with 16 1.06-1.10x);
    - M = 1 past the 8448 rows that tuned()'s 1056 thread blocks of 8 warps at 32 registers give a warp each, and
      up to 12672, two rows per warp (``ahead = 1``: the second trip set ahead lost here; on 8192 rows two rows per
      warp lost to a warp per row);
    - M = 2 up to 4224 rows, a warp per row in thread blocks of 16 warps, 2 per SM (``ahead = 2``, with PDL 3: two
      trips in flight), and up to 6336, 3 per SM (``ahead = 1``);
    - M = 4 up to 4224 rows, tuned()'s 132 thread blocks of 32 warps, a warp per row (``ahead = 2``; with PDL
      1.16x, plain 1.01-1.02x);
    measured on an H100 in docs/perf.md. Larger grids keep tuned(): loading ahead lost on them, as on M = 8. Every
    launch loads its weights past L1 (common.WEIGHT_HINT)."""
    cfg = replace(tuned(m, s.rows, s.k), pdl=pdl, hint=WEIGHT_HINT)
    if m > 4 or s.rows != 1 or not (half2_path(s, cfg, lanes_per_block(s, cfg.lanes)) and cfg.stages(m, s.k)):
        return cfg

    def rows_at(ahead, rounds=1):  # rows that many rounds of a warp per row cover, every thread block resident
        return SMALL_GRID * per_sm(cfg.warps, AHEAD_REGISTERS[m, ahead]) * cfg.warps * rounds

    def resident(ahead, rounds=1, warps=cfg.warps):
        return replace(cfg, warps=warps, ctas=-(-s.block_rows // (warps * rounds)), ahead=ahead, trigger="early")

    if m == 2:  # with PDL two trips in flight (ahead = 3: 1.05-1.08x over 2 on 2048-4096 rows; plain 0.96-1.05x)
        if s.block_rows <= rows_at(2):
            return resident(3 if pdl else 2)
        return resident(1) if s.block_rows <= rows_at(1) else cfg
    if m == 4:  # tuned() is already one wave of 132 thread blocks
        return replace(cfg, ahead=2) if s.block_rows <= min(rows_at(2), cfg.ctas * cfg.warps) else cfg
    for warps in (cfg.warps, 2 * cfg.warps, 4 * cfg.warps):
        if s.block_rows <= SMALL_GRID * warps:
            if warps == 4 * cfg.warps and s.block_rows <= IDLE_SMS * SMALL_GRID * warps:
                return resident(2)  # thread blocks of 32 warps would leave a fifth of the SMs idle
            return replace(cfg, ahead=2) if warps == cfg.warps else replace(cfg, warps=warps, ctas=SMALL_GRID,
                                                                              ahead=2)
    if s.block_rows <= rows_at(2):  # with PDL half as many thread blocks, as many resident warps (3 x 16, 6 x 8)
        return resident(2, warps=2 * cfg.warps if pdl else cfg.warps)
    if cfg.ctas * cfg.warps < s.block_rows <= rows_at(1, 2):
        return resident(1, 2)
    return cfg


def rows_per_warp(s: BSRShape, m: int, budget: int = 16) -> int:
    """Rows of a block one warp owns: all R unless M x R accumulators would exceed ``budget`` registers."""
    r = s.rows
    while m * r > budget and r > 1:
        r //= 2
    return r


def lanes_per_block(s: BSRShape, want: int) -> int:
    """``want`` if a block's words split evenly into whole words per lane with no code crossing words."""
    ln = want
    while ln > 1 and (s.words % ln or s.per_word * s.bits != 32 or s.per_word * s.words != s.group):
        ln //= 2
    return ln


def group_major(i, q, m: int, group: int):
    """Staged position (in 16-byte chunks) of token ``i``'s chunk ``q`` (8 columns) when the activations are
    laid out [column group][token][columns]: a group's M tokens side by side, 32 bytes each at G = 16, so
    tokens rotated by a lane's slot in the quarter-warp land in distinct banks whatever the groups."""
    cpg = group // 8
    return (q // cpg * m + i) * cpg + q % cpg


def launch(s: BSRShape, m: int, cfg: DecodeConfig) -> dict:
    """The grid's warps, tasks per block row and kept blocks per warp-trip: what ``warp_plan.lpt`` needs."""
    splits = s.rows // rows_per_warp(s, m, cfg.row_budget)
    lanes = lanes_per_block(s, cfg.lanes)
    ctas = -(-s.block_rows * splits // cfg.warps)
    if half2_path(s, cfg, lanes) and cfg.stages(m, s.k):  # thread blocks that stage loop over many rows
        ctas = min(ctas, cfg.ctas)
    return {"warps": ctas * cfg.warps, "splits": splits, "trip_blocks": 32 // lanes * cfg.unroll}


def half2_path(s: BSRShape, cfg: DecodeConfig, lanes: int) -> bool:
    """4-bit interleaved codes decoded in fp16 pairs (and activations gathered 16 bytes at a time)."""
    return cfg.half2 and s.interleaved and s.dtype == "float16" and s.group // lanes % 8 == 0


def bsr_decode_cuda(s: BSRShape, m: int, cfg: DecodeConfig = DEFAULT):
    k, rows, group, words, per, bits, dt = s.k, s.rows, s.group, s.words, s.per_word, s.bits, s.dtype
    nbr = s.block_rows
    rw = rows_per_warp(s, m, cfg.row_budget)
    splits = rows // rw  # warps per block row
    tasks = nbr * splits
    warps, unroll = cfg.warps, cfg.unroll
    lanes = lanes_per_block(s, cfg.lanes)
    wpl = words // lanes  # words per lane
    cols = group // lanes  # columns per lane
    xv = 8 if cols % 8 == 0 else cols  # activations per vector load (8 x fp16 = 16 bytes)
    step = 32 // lanes  # blocks per warp per unrolled step
    mask = 2**bits - 1
    half2 = half2_path(s, cfg, lanes)
    fence = cfg.fence
    packed = s.packed  # one uint32 per block: scale << 16 | zero << 12 | column (tvm_schedules.layout)
    meta = cfg.ablate != "meta"  # load the indices, scales and zero points (all but an ablation do)
    word = packed and meta  # a block's column, zero point and scale come from its loaded word mw
    smem = half2 and cfg.stages(m, k)
    dyn = smem and m * k * 2 > SMEM_BYTES  # more than a thread block's static shared memory
    nctas = launch(s, m, cfg)["warps"] // warps
    # PDL: where the grid is one wave, let the next kernel launch right after the wait (measured the same as
    # after the loop at 132 thread blocks, 1-2% faster in the compiled SmolLM2; at 1056 thread blocks it cost
    # M = 1 1.2x: docs/perf.md); also where for_shape sized the grid to be resident ("early")
    early = nctas <= SMALL_GRID or cfg.trigger == "early"
    reps = -(-tasks // (nctas * warps))
    plan = cfg.plan
    ahead = cfg.ahead
    assert not (plan and ahead), "the prologue loads the grid-order first task, not the plan's"
    assert not (ahead and cfg.pdl and not smem), "with PDL the prologue needs staged activations (coherent loads)"
    base, tbase = nbr + 1, records_at(nbr, nctas * warps)  # where the plan's warp offsets and records start
    rot = smem and cfg.rotate and m >= 2  # group-major staging, tokens rotated per lane
    turns = min(4, m) if rot else 1  # distinct rotations: a quarter-warp's blocks at 2 lanes per block
    xwords = m * k // 2 if smem else 4
    stage = -(-xwords // 4 // (warps * 32))  # 16-byte copies per thread
    ld = weight_load(cfg.hint)

    def staged(chunk):
        """Where the 16-byte chunk ``chunk`` of the row-major M x K activations sits in shared memory."""
        return group_major(chunk // (k // 8), chunk % (k // 8), m, group) if rot else chunk

    def gathered(i, q):
        """Shared-memory chunk of token ``i``, 16-byte column chunk ``q``."""
        return group_major(i, q, m, group) if rot else i * (k // 8) + q

    def trips_of(span):
        """Block rows this warp walks: its share of the plan, or one per round of the whole grid."""
        return span[1] - span[0] if plan else reps

    def task_of(rec, rep, bx, ty):
        return rec[0] if plan else (rep * nctas + bx) * warps + ty

    def start_of(indptr, rec, br):  # the row's first kept block (the plan's record carries it)
        return rec[1] if plan else indptr[br]

    def count_of(indptr, rec, br, start):
        return rec[2] if plan else indptr[br + 1] - start

    def position(it, u, lane_blk):
        """The lane's block ``u`` of trip ``it``: its index within the row."""
        return (it * unroll + u) * step + lane_blk

    @T.macro
    def settle(mw, sh, zb, sv, zv, slot, u, r, it, count, lane_blk):
        """Row ``r`` of block ``u``'s fp32 scale (0 for the clamped repeats past the row's end) and zero point,
        from register set ``slot``."""
        if word:  # R = 1: the block's word holds both
            sh[slot, u, r] = T.Cast("uint16", word_scale_bits(mw[slot, u]))
            zb[slot, u, r] = T.Cast("uint8", word_zero(mw[slot, u]))
        sv[u, r] = T.Cast("float32", T.reinterpret("float16", sh[slot, u, r])) * T.Cast(
            "float32", position(it, u, lane_blk) < count)
        zv[u, r] = T.Cast("uint32", zb[slot, u, r])

    @T.macro
    def issue(indices, qw, sc, zr, mw, ix, wq, sh, zb, sv, zv, slot, u, it, start, count, r0, lane_blk, sub, now):
        """Load block ``u`` of trip ``it`` into register set ``slot`` (inline PTX: nvcc keeps the loads here
        instead of sinking each to its use); ``now``: settle each row's scale and zero point right after."""
        b = start + T.min(position(it, u, lane_blk), count - 1)
        if word:
            ld.b32(mw[slot, u], indices.ptr_to([b]))
        elif meta:
            T.ptx.ld.global_.nc.b16(ix[slot, u], indices.ptr_to([b]))
        else:  # ablation: a column spread like real ones, no index load
            ix[slot, u] = T.Cast("uint16", b % (k // group))
        for r in T.unroll(rw):
            if wpl == 1:
                ld.b32(wq[slot, u, r, 0], qw.ptr_to([b, r0 + r, sub]))
            elif wpl == 2:
                ld.v2.b32(wq[slot, u, r, 0], wq[slot, u, r, 1], qw.ptr_to([b, r0 + r, sub * 2]))
            else:
                for w in T.vectorized(wpl):
                    wq[slot, u, r, w] = qw[b, r0 + r, sub * wpl + w]
            if meta and not word:  # packed (word): the block's word holds scale and zero point
                T.ptx.ld.global_.nc.b16(sh[slot, u, r], sc.ptr_to([b, r0 + r]))
                T.ptx.ld.global_.nc.u8(zb[slot, u, r], zr.ptr_to([b, r0 + r]))
            if not meta:  # ablation: scale 1, zero point 8
                sh[slot, u, r] = T.uint16(0x3C00)
                zb[slot, u, r] = T.uint8(8)
            if now:
                settle(mw, sh, zb, sv, zv, slot, u, r, it, count, lane_blk)

    @T.macro
    def trip(it, cur, rep, start, count, trips, r0, lane_blk, sub, ty, tx, indices, qw, sc, zr, x, x32, xs, mw, ix, wq,
             sh, zb, sv, zv, col, chk, sink, acc, dq, qf, xl, x2, h, part):
        """Trip ``it`` of a warp's row from register set ``cur``: its loads (unless issued ahead), scales and zero
        points, the fence, the arithmetic."""
        if ahead == 3:  # two trips in flight: the next one's loads go out before this one's have landed
            for u in T.unroll(unroll):
                if rep > 0 and it == 0:  # the prologue issued only the first task's first trip
                    issue(indices, qw, sc, zr, mw, ix, wq, sh, zb, sv, zv, 0, u, 0, start, count, r0, lane_blk, sub,
                          False)
                if it + 1 < trips:
                    issue(indices, qw, sc, zr, mw, ix, wq, sh, zb, sv, zv, 1 - cur, u, it + 1, start, count, r0,
                          lane_blk, sub, False)
        for u in T.unroll(unroll):
            if ahead == 0:
                issue(indices, qw, sc, zr, mw, ix, wq, sh, zb, sv, zv,
                      0, u, it, start, count, r0, lane_blk, sub, True)
            else:
                if ahead == 1:  # the prologue issued the first task's first trip
                    if rep > 0 or it > 0:
                        issue(indices, qw, sc, zr, mw, ix, wq, sh, zb, sv, zv,
                              0, u, it, start, count, r0, lane_blk, sub, False)
                elif ahead == 2 and rep > 0 and it == 0:  # later trips come from set 1
                    issue(indices, qw, sc, zr, mw, ix, wq, sh, zb, sv, zv,
                          0, u, it, start, count, r0, lane_blk, sub, False)
                for r in T.unroll(rw):
                    settle(mw, sh, zb, sv, zv, cur, u, r, it, count, lane_blk)
            col[u] = (T.Cast("int32", word_column(mw[cur, u]) if word else ix[cur, u])
                      * (group // 8) + sub * (cols // 8))
        if fence:
            # A store that needs every loaded word: ptxas otherwise sinks each block's
            # loads to their first use, leaving one block per lane in flight.
            chk[0] = T.uint32(0)
            for u in T.unroll(unroll):
                chk[0] = chk[0] ^ (mw[cur, u] if word else T.Cast("uint32", ix[cur, u]))
                for r in T.unroll(rw):
                    chk[0] = chk[0] ^ T.Cast("uint32", sh[cur, u, r]) ^ zv[u, r]
                    for w in T.unroll(wpl):
                        chk[0] = chk[0] ^ wq[cur, u, r, w]
            T.ptx.st.shared.b32(sink.ptr_to([ty * 32 + tx]), chk[0])
        if ahead == 2:  # the next trip's loads in flight during this trip's arithmetic
            if it + 1 < trips:
                for u in T.unroll(unroll):
                    issue(indices, qw, sc, zr, mw, ix, wq, sh, zb, sv, zv,
                          1, u, it + 1, start, count, r0, lane_blk, sub, False)
        for u in T.unroll(unroll if cfg.ablate != "math" else 0):
            for r in T.unroll(rw):
                if half2:  # codes 2j, 2j+1 as half2 (1024 + c) - (1024 + z): exact in fp16
                    for j in T.unroll(cols // 2):
                        dq[j] = ((wq[cur, u, r, j // 4] >> T.uint32(j % 4 * 4)) & T.uint32(0x000F000F)
                                 ) | T.uint32(0x64006400)
                        T.ptx.sub.f16x2(dq[j], dq[j], (T.uint32(0x6400) + zv[u, r]) * T.uint32(0x10001))
                else:
                    for j in T.unroll(cols):
                        qf[j] = T.reinterpret("float32", ((wq[cur, u, r, j // per] >> T.uint32(
                            nibble(j) * bits if s.interleaved else j % per * bits))
                            & T.uint32(mask)) | T.uint32(MAGIC)) - (T.float32(2**23) + T.Cast(
                                "float32", zv[u, r]))
                for i in T.unroll(m):
                    if half2:  # fp16 products summed in fp16 over one group's pairs, then fp32
                        for c in T.unroll(cols // 8):
                            if smem:
                                for v in T.vectorized(4):
                                    x2[c * 4 + v] = xs[gathered(
                                        (i + lane_blk % turns) % m, col[u] + c) * 4 + v]
                            else:
                                for v in T.vectorized(4):
                                    x2[c * 4 + v] = x32[i * (k // 2) + (col[u] + c) * 4 + v]
                        h[0] = T.uint32(0)
                        for j in T.unroll(cols // 2):
                            T.ptx.fma.rn.f16x2(h[0], dq[j], x2[j], h[0])
                        part[0] = T.Cast("float32", T.reinterpret("float16", T.Cast(
                            "uint16", h[0] & T.uint32(0xFFFF)))) + T.Cast("float32", T.reinterpret(
                                "float16", T.Cast("uint16", h[0] >> T.uint32(16))))
                    else:
                        for c in T.unroll(cols // xv):
                            for v in T.vectorized(xv):
                                xl[c * xv + v] = x[i, col[u] * 8 + c * xv + v]
                        part[0] = T.float32(0)
                        for j in T.unroll(cols):
                            part[0] = part[0] + qf[j] * T.Cast("float32", xl[j])
                    acc[i * rw + r] = acc[i * rw + r] + part[0] * sv[u, r]
        if ahead == 2:
            if it + 1 < trips:
                for u in T.unroll(unroll):
                    if word:
                        mw[0, u] = mw[1, u]
                    else:
                        ix[0, u] = ix[1, u]
                    for r in T.unroll(rw):
                        if not word:
                            sh[0, u, r] = sh[1, u, r]
                            zb[0, u, r] = zb[1, u, r]
                        for w in T.unroll(wpl):
                            wq[0, u, r, w] = wq[1, u, r, w]

    @T.macro
    def body(x, indptr, indices, qw, sc, zr, y, m, nnz):
        x32 = T.decl_buffer((m * k // 2,), "uint32", data=x.data)  # activation pairs as 32-bit words
        for bx in T.thread_binding(nctas, thread="blockIdx.x"):
            for ty in T.thread_binding(warps, thread="threadIdx.y"):
                for tx in T.thread_binding(32, thread="threadIdx.x"):
                    xs = T.alloc_buffer((xwords,), "uint32", scope="shared.dyn" if dyn else "shared")
                    # a trip's loads, issued before any arithmetic so they are all in flight at once; set 1 holds
                    # the next trip's (ahead = 2)
                    wq = T.alloc_buffer((2, unroll, rw, wpl), "uint32", scope="local")
                    ix = T.alloc_buffer((2, unroll), "uint16", scope="local")
                    mw = T.alloc_buffer((2, unroll), "uint32", scope="local")  # packed: the block's metadata word
                    sh = T.alloc_buffer((2, unroll, rw), "uint16", scope="local")
                    zb = T.alloc_buffer((2, unroll, rw), "uint8", scope="local")
                    sv = T.alloc_buffer((unroll, rw), "float32", scope="local")
                    zv = T.alloc_buffer((unroll, rw), "uint32", scope="local")
                    xr = T.alloc_buffer((4,), "uint32", scope="local")  # one coherent 16-byte load
                    if ahead > 0:  # the first task's first trip, before anything that waits (staging, the grid)
                        wq[0, 0, 0, 0] = T.uint32(0)  # what the wait's branch reads where a warp loads nothing
                        mw[0, 0] = T.uint32(0)
                        ix[0, 0] = T.uint16(0)
                        if bx * warps + ty < tasks:
                            first = indptr[(bx * warps + ty) // splits]
                            end = indptr[(bx * warps + ty) // splits + 1]
                            if end > first:
                                for u in T.unroll(unroll):
                                    issue(indices, qw, sc, zr, mw, ix, wq, sh, zb, sv, zv, 0, u, 0, first, end - first,
                                          (bx * warps + ty) % splits * rw, tx // lanes, tx % lanes, False)
                    if cfg.pdl and ahead == 0:  # nothing before this reads what the previous kernel writes
                        T.ptx.griddepcontrol.wait()
                    if cfg.pdl and ahead > 0:
                        # ptxas hoists an unconditional wait to the kernel's first instruction, ahead of the
                        # prologue's loads; a branch on their data keeps it after them (either way it waits)
                        if (mw[0, 0] if word else T.Cast("uint32", ix[0, 0])) ^ wq[0, 0, 0, 0] != T.uint32(0x9E3779B9):
                            T.ptx.griddepcontrol.wait()
                        else:
                            T.ptx.griddepcontrol.wait()
                    if cfg.pdl:
                        if early:  # one wave of thread blocks: the next kernel's take no slot this one needs
                            T.ptx.griddepcontrol.launch_dependents()
                    if smem:
                        for c in range(stage):
                            if (c * warps * 32 + ty * 32 + tx) * 4 < xwords:
                                if cfg.pdl and ahead > 0:  # coherent loads: ptxas moves .nc ones above the wait
                                    T.ptx.ld.global_.v4.b32(xr[0], xr[1], xr[2], xr[3],
                                                            x32.ptr_to([(c * warps * 32 + ty * 32 + tx) * 4]))
                                    for v in T.vectorized(4):
                                        xs[staged(c * warps * 32 + ty * 32 + tx) * 4 + v] = xr[v]
                                else:
                                    for v in T.vectorized(4):
                                        xs[staged(c * warps * 32 + ty * 32 + tx) * 4 + v] = x32[
                                            (c * warps * 32 + ty * 32 + tx) * 4 + v]
                        T.tvm_storage_sync("shared")
                    acc = T.alloc_buffer((m * rw,), "float32", scope="local")
                    part = T.alloc_buffer((1,), "float32", scope="local")
                    qf = T.alloc_buffer((cols,), "float32", scope="local")
                    xl = T.alloc_buffer((cols,), dt, scope="local")
                    red = T.alloc_buffer((1,), "float32", scope="local")
                    h = T.alloc_buffer((1,), "uint32", scope="local")
                    x2 = T.alloc_buffer((cols // 2,), "uint32", scope="local")
                    dq = T.alloc_buffer((cols // 2,), "uint32", scope="local")
                    col = T.alloc_buffer((unroll,), "int32", scope="local")
                    chk = T.alloc_buffer((1,), "uint32", scope="local")
                    sink = T.alloc_buffer((warps * 32,), "uint32", scope="shared")
                    span = T.alloc_buffer((2,), "int32", scope="local")  # plan: the warp's first task, last + 1
                    rec = T.alloc_buffer((4,), "int32", scope="local")  # plan: task, first block, block count
                    if plan:  # plan warp ty * blocks + bx: a plan's consecutive warps sit on different SMs
                        span[0] = indptr[base + ty * nctas + bx]
                        span[1] = indptr[base + ty * nctas + bx + 1]
                    for rep in range(trips_of(span)):
                        for j in range(m * rw):
                            acc[j] = T.float32(0)
                        if plan:
                            for v in T.vectorized(4):
                                rec[v] = indptr[tbase + (span[0] + rep) * 4 + v]
                        task = task_of(rec, rep, bx, ty)
                        br = task // splits
                        r0 = task % splits * rw
                        lane_blk = tx // lanes
                        sub = tx % lanes
                        if task < tasks:
                            start = start_of(indptr, rec, br)
                            count = count_of(indptr, rec, br, start)
                            trips = (count + step * unroll - 1) // (step * unroll)
                            if ahead == 3:  # the register sets take turns, two trips a round: nothing is copied
                                for it2 in range((trips + 1) // 2):
                                    for cur in T.unroll(2):
                                        if it2 * 2 + cur < trips:
                                            trip(it2 * 2 + cur, cur, rep, start, count, trips, r0, lane_blk, sub, ty,
                                                 tx, indices, qw, sc, zr, x, x32, xs, mw, ix, wq, sh, zb, sv, zv, col,
                                                 chk, sink, acc, dq, qf, xl, x2, h, part)
                            else:
                                for it in range(trips):
                                    trip(it, 0, rep, start, count, trips, r0, lane_blk, sub, ty, tx, indices, qw,
                                         sc, zr, x, x32, xs, mw, ix, wq, sh, zb, sv, zv, col, chk, sink, acc, dq, qf,
                                         xl, x2, h, part)
                        for j in range(m * rw):
                            # acc[i * rw + r] holds token (i + rotation) % M: the lane's own order, undone here
                            red[0] = acc[j]
                            for t in range(1, turns):
                                red[0] = T.if_then_else(lane_blk % turns == t,
                                                        acc[(j // rw - t) % m * rw + j % rw], red[0])
                            for o in T.unroll(5):
                                red[0] = red[0] + T.tvm_warp_shuffle_down(
                                    T.tvm_warp_activemask(), red[0], 16 >> o, 32, 32)
                            if tx == 0 and task < tasks:
                                y[j // rw, br * rows + r0 + j % rw] = T.Cast(dt, red[0])
                    if cfg.pdl and not early and cfg.trigger != "exit":  # the next kernel's thread blocks may
                        if cfg.trigger == "block":  # take the SMs this one leaves
                            T.tvm_storage_sync("shared")
                        T.ptx.griddepcontrol.launch_dependents()

    return bsr_func(s, body, tokens=m, indptr_len=tbase + 4 * tasks if plan else None)
