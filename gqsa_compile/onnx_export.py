"""Export a GQSA checkpoint's forward as an ONNX graph written for compilation.

The graph is built node by node from ModelArgs (not traced from HF's forward, whose dynamic-shape mask
and position code the Relax importer cannot take). Standard ONNX ops carry norms, RoPE and residuals;
the parts no ONNX op expresses are nodes of the ``gqsa`` domain whose inputs are the BSR tensors:

    gqsa.BSRMatMul(x, indptr, indices, qweight, scales, zeros)          y = x W^T
    gqsa.BSRMatMul(x, indptr, indices, qweight), packed = 1              the same, metadata packed in indices
    gqsa.BSRMatMul(x, indptr, indices, qweight), packed = 1, stream = C  the same, indptr followed by the stream
                                                                        GEMV's plan for C thread blocks
    gqsa.BSREmbedding(ids, indptr, qweight, scales, zeros)              rows of the quantized table
    gqsa.KVAppend(cache, new, positions) -> cache                        written in place
    gqsa.CachedAttention(q, k_cache, v_cache, positions)                 causal over the cache

Weights are graph *inputs* (not initializers), so the file is small and the weights stay in one place.
Where fuse_projections stacked a layer's q/k/v (or gate/up) into one matrix, one BSRMatMul and Slices of
its output stand for the separate ones.
Inputs, in order: input_ids [T], positions [T], k/v cache per layer [S, n_kv, head_dim], then weights.
Output: logits [T, vocab] (fp32).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from training.bsr import BSRWeight
from training.model import ModelArgs

DOMAIN = "gqsa"
OPSET = 18
_NP2ONNX = {np.dtype(k): v for k, v in {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16,
                                         "int32": TensorProto.INT32, "int64": TensorProto.INT64,
                                         "uint8": TensorProto.UINT8, "uint16": TensorProto.UINT16,
                                         "uint32": TensorProto.UINT32}.items()}


class _Graph:
    def __init__(self):
        self.nodes, self.inputs, self.inits, self._n = [], [], [], 0

    def input(self, name, dtype, shape):
        self.inputs.append(helper.make_tensor_value_info(name, _NP2ONNX[np.dtype(dtype)], shape))
        return name

    def const(self, values, dtype="int64"):
        name = f"const_{len(self.inits)}"
        self.inits.append(onnx.numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    def op(self, op_type, *inputs, domain="", **attrs):
        self._n += 1
        out = f"{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], domain=domain, **attrs))
        return out


def cache_names(args: ModelArgs) -> list[str]:
    return [f"layers.{i}.{kv}_cache" for i in range(args.n_layers) for kv in ("k", "v")]


def weight_specs(args: ModelArgs, dense: dict[str, np.ndarray], compressed: dict[str, BSRWeight],
                 dtype: str) -> list[tuple[str, str, tuple]]:
    """(name, dtype, shape) of every weight input, in graph order; norms are cast to the activation dtype."""
    specs = [(k, dtype, v.shape) for k, v in sorted(dense.items())]
    half = args.head_dim // 2
    specs += [("rope_cos", dtype, (args.max_seq_len, half)), ("rope_sin", dtype, (args.max_seq_len, half))]
    for name in sorted(compressed):
        for t, arr in compressed[name].tensors(name).items():
            specs.append((t, str(arr.dtype), arr.shape))
    return specs


def weight_arrays(args: ModelArgs, dense: dict[str, np.ndarray], compressed: dict[str, BSRWeight],
                  dtype: str) -> dict[str, np.ndarray]:
    """The weight inputs' values, in graph order (what the artifact's weights file holds)."""
    from training.model import rope_tables

    cos, sin = rope_tables(args, args.max_seq_len)
    values = {k: v.astype(dtype) for k, v in dense.items()}
    values.update(rope_cos=cos.numpy().astype(dtype), rope_sin=sin.numpy().astype(dtype))
    for name, b in compressed.items():
        values.update(b.tensors(name))
    return {name: values[name] for name, _, _ in weight_specs(args, dense, compressed, dtype)}


def build_graph(args: ModelArgs, dense: dict[str, np.ndarray], compressed: dict[str, BSRWeight],
                dtype: str = "float16") -> onnx.ModelProto:
    g = _Graph()
    H, KV, D = args.n_heads, args.n_kv_heads, args.head_dim
    ids = g.input("input_ids", "int32", ["T"])
    pos = g.input("positions", "int32", ["T"])
    caches = {n: g.input(n, dtype, [args.max_seq_len, KV, D]) for n in cache_names(args)}
    for name, dt, shape in weight_specs(args, dense, compressed, dtype):
        g.input(name, dt, list(shape))
    f32 = TensorProto.FLOAT
    act = _NP2ONNX[np.dtype(dtype)]
    eps = g.const([args.norm_eps], dtype)
    axes_last = g.const([-1])

    def bsr_attrs(b: BSRWeight):
        return dict(n=b.shape[0], k=b.shape[1], bits=b.bits, group=b.group, rows=b.rows)

    def linear(x, name):  # packed metadata (kernel_layout.PackedBSRWeight): no scales and zeros inputs
        b = compressed[name]
        packed = {"packed": 1} if getattr(b, "packed", False) else {}
        if getattr(b, "stream", 0):  # kernel_layout.StreamBSRWeight: the stream GEMV's plan follows indptr
            packed["stream"] = b.stream
        return g.op("BSRMatMul", x, *(f"{name}.{t}" for t in b.TENSORS), domain=DOMAIN, **bsr_attrs(b), **packed)

    def columns(x, sizes):
        """Columns of [T, N] ``x`` in consecutive pieces (a fused projection's outputs), as Slices: unlike a
        Split (a tuple, measured: one more kernel per piece), a slice fuses into the kernel that reads it."""
        starts = np.cumsum([0] + sizes[:-1]).tolist()
        return [g.op("Slice", x, g.const([a]), g.const([a + n]), g.const([1])) for a, n in zip(starts, sizes)]

    def projections(x, p, fused, names, sizes):
        """The outputs of ``names``: one BSRMatMul per matrix, or one for their rows stacked (fuse_projections)."""
        if f"{p}.{fused}" in compressed:
            return columns(linear(x, f"{p}.{fused}"), sizes)
        return [linear(x, f"{p}.{n}") for n in names]

    def rmsnorm(x, weight):
        x32 = g.op("Cast", x, to=f32)
        ms = g.op("ReduceMean", g.op("Mul", x32, x32), axes_last, keepdims=1)
        inv = g.op("Reciprocal", g.op("Sqrt", g.op("Add", ms, g.op("Cast", eps, to=f32))))
        return g.op("Mul", g.op("Cast", g.op("Mul", x32, inv), to=act), weight)

    def rope(x, cos, sin):
        x1, x2 = (f"split_{len(g.nodes)}_{i}" for i in range(2))
        g.nodes.append(helper.make_node("Split", [x, g.const([D // 2, D // 2])], [x1, x2], axis=2))
        return g.op("Concat", g.op("Sub", g.op("Mul", x1, cos), g.op("Mul", x2, sin)),
                    g.op("Add", g.op("Mul", x2, cos), g.op("Mul", x1, sin)), axis=2)

    emb = compressed["embed_tokens"]
    x = g.op("BSREmbedding", ids, "embed_tokens.indptr", "embed_tokens.qweight", "embed_tokens.scales",
             "embed_tokens.zeros", domain=DOMAIN, **bsr_attrs(emb))
    one = g.const([1])
    cos = g.op("Unsqueeze", g.op("Gather", "rope_cos", pos, axis=0), one)
    sin = g.op("Unsqueeze", g.op("Gather", "rope_sin", pos, axis=0), one)
    for i in range(args.n_layers):
        p = f"layers.{i}"
        h = rmsnorm(x, f"{p}.input_layernorm.weight")
        q, k, v = projections(h, p, "self_attn.qkv_proj", [f"self_attn.{n}_proj" for n in "qkv"],
                              [H * D, KV * D, KV * D])
        q = rope(g.op("Reshape", q, g.const([-1, H, D])), cos, sin)
        k = rope(g.op("Reshape", k, g.const([-1, KV, D])), cos, sin)
        v = g.op("Reshape", v, g.const([-1, KV, D]))
        kc = g.op("KVAppend", caches[f"{p}.k_cache"], k, pos, domain=DOMAIN)
        vc = g.op("KVAppend", caches[f"{p}.v_cache"], v, pos, domain=DOMAIN)
        a = g.op("CachedAttention", q, kc, vc, pos, domain=DOMAIN)
        x = g.op("Add", x, linear(g.op("Reshape", a, g.const([-1, H * D])), f"{p}.self_attn.o_proj"))
        h = rmsnorm(x, f"{p}.post_attention_layernorm.weight")
        gate, up = projections(h, p, "mlp.gate_up_proj", ["mlp.gate_proj", "mlp.up_proj"],
                               [args.hidden_dim, args.hidden_dim])
        x = g.op("Add", x, linear(g.op("Mul", g.op("Mul", gate, g.op("Sigmoid", gate)), up), f"{p}.mlp.down_proj"))
    head = "lm_head" if "lm_head" in compressed else "embed_tokens"
    logits = g.op("Cast", linear(rmsnorm(x, "norm.weight"), head), to=f32)
    out = helper.make_tensor_value_info(logits, f32, ["T", args.vocab_size])
    graph = helper.make_graph(g.nodes, "gqsa_llama", g.inputs, [out], initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(DOMAIN, 1)])
    model.producer_name = "gqsa-compile"
    onnx.checker.check_model(model)
    return model
