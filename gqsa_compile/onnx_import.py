"""Import the ONNX graph into Relax, lowering the ``gqsa`` custom nodes to our TensorIR kernels (call_tir).

TVM's ONNX frontend has no public hook for custom ops: it looks ``node.op_type`` up in the private
``_get_convert_map()``. We wrap that function for the duration of an import (hence the exact TVM pin).
The graph is imported twice: ``prefill`` with a symbolic token count T, ``decode`` with T = 1, so each
custom node picks the kernel family for its static shape. Both land in one IRModule.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import onnx
import tvm
from tvm import relax
from tvm.relax.frontend.onnx import onnx_frontend as _of

import tvm_schedules
from tvm_schedules.common import BSRShape


@dataclass
class LoweringContext:
    target: tvm.target.Target
    dtype: str
    n_heads: int
    n_kv: int
    head_dim: int
    cache_len: int
    interleaved: bool = False  # 4-bit codes in the kernels' interleaved order (kernel_layout)
    pdl: bool = False  # decode GEMVs with programmatic dependent launch (tvm_schedules.launch)
    wgmma: bool = False  # every arch sm_90a: long prefills on Hopper's wgmma (tvm_schedules.bsr_prefill_wgmma)


_CTX: list[LoweringContext] = []


def _ctx() -> LoweringContext:
    return _CTX[-1]


def _static(dim) -> int | None:
    return int(dim) if isinstance(dim, (int, tvm.tirx.IntImm)) else None


def _add(bb, func) -> relax.GlobalVar:
    name = func.attrs["global_symbol"]
    for gv in bb.get().get_global_vars():
        if gv.name_hint == name:
            return gv
    return bb.add_func(func, name)


class BSRMatMul(_of.OnnxOpConverter):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        c = _ctx()
        s = BSRShape(attr["n"], attr["k"], attr["bits"], attr["group"], attr["rows"], c.dtype, c.interleaved,
                     bool(attr.get("packed", 0)), int(attr.get("stream", 0)))
        x = inputs[0]
        m = x.ty.shape[0]
        gv = _add(bb, tvm_schedules.bsr_matmul(s, _static(m), c.target, pdl=c.pdl, wgmma=c.wgmma))
        return relax.call_tir(gv, list(inputs), relax.TensorType([m, s.n], c.dtype))


class BSREmbedding(_of.OnnxOpConverter):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        c = _ctx()
        s = BSRShape(attr["n"], attr["k"], attr["bits"], attr["group"], attr["rows"], c.dtype, c.interleaved)
        gv = _add(bb, tvm_schedules.embed(s, c.target))
        return relax.call_tir(gv, list(inputs), relax.TensorType([inputs[0].ty.shape[0], s.k], c.dtype))


class KVAppend(_of.OnnxOpConverter):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        c = _ctx()
        gv = _add(bb, tvm_schedules.cache_append(c.n_kv, c.head_dim, c.cache_len, c.dtype, c.target))
        return relax.call_tir_inplace(gv, list(inputs), [0], inputs[0].ty)


class CachedAttention(_of.OnnxOpConverter):
    @classmethod
    def _impl_v1(cls, bb, inputs, attr, params):
        c = _ctx()
        gv = _add(bb, tvm_schedules.attention(c.n_heads, c.n_kv, c.head_dim, c.cache_len, c.dtype, c.target))
        return relax.call_tir(gv, list(inputs), inputs[0].ty)


CUSTOM_OPS = {"BSRMatMul": BSRMatMul, "BSREmbedding": BSREmbedding, "KVAppend": KVAppend,
              "CachedAttention": CachedAttention}


@contextlib.contextmanager
def _custom_ops(ctx: LoweringContext):
    original = _of._get_convert_map
    _of._get_convert_map = lambda: {**original(), **CUSTOM_OPS}
    _CTX.append(ctx)
    try:
        yield
    finally:
        _of._get_convert_map = original
        _CTX.pop()


def _import(model: onnx.ModelProto, ctx: LoweringContext, tokens: int | None) -> tvm.IRModule:
    shape_dict = {} if tokens is None else {"input_ids": [tokens], "positions": [tokens]}
    with _custom_ops(ctx):
        return _of.from_onnx(model, shape_dict=shape_dict, sanitize_input_names=False)


@relax.expr_functor.mutator
class _Rebind(relax.PyExprMutator):
    """Point GlobalVars at those of the merged module, matched by name."""

    def __init__(self, mod, gvars):
        super().__init__(mod)
        self.gvars = gvars

    def visit_global_var_(self, op):
        return self.gvars.get(op.name_hint, op)


# Inputs of each entry point that change address from call to call; the rest (caches, weights) the runtime
# keeps in place. TVM's CUDA-graph rewrite (``num_input``) may capture kernels that read only fixed-address
# tensors: decode's token and position live in device tensors the runtime overwrites, so all of decode is
# fixed; prefill's token count varies, so its input_ids and positions are not.
VARYING_INPUTS = {"prefill": 2, "decode": 0}


def import_model(model: onnx.ModelProto, ctx: LoweringContext) -> tvm.IRModule:
    """One IRModule with Relax functions ``prefill`` (T symbolic) and ``decode`` (T = 1)."""
    parts = {"prefill": _import(model, ctx, None), "decode": _import(model, ctx, 1)}
    bb = relax.BlockBuilder()
    gvars = {}
    for mod in parts.values():
        for gv, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc) and gv.name_hint not in gvars:
                gvars[gv.name_hint] = bb.add_func(func, gv.name_hint)
    for entry, mod in parts.items():
        main = mod["main"]
        rebound = _Rebind(mod, gvars).visit_expr(main)
        bb.add_func(rebound.with_attrs({"global_symbol": entry, "num_input": VARYING_INPUTS[entry]}), entry)
    return bb.get()
