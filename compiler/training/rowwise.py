"""Which ops keep the examples of a batch apart: the test behind a ``sharded`` value.

A data-parallel worker holds some rows of every per-example value.  An op's
output is a worker's rows of the global batch's output only if the op computes
each example's rows from that example's rows alone — it is *row-wise* along
the batch axis.  An output whose type merely mentions the batch dim is not
enough: ``softmax(x, axis = 0)``, ``h @ transpose(h)`` (``[B, B]``) or
``h[1:] - h[:B-1]`` mix examples, and on a shard they silently compute
something else.

:func:`row_wise` says yes only for ops known to be row-wise (a whitelist):
elementwise and broadcasting ops (``sum_to`` over other axes), contractions
and convolutions that keep the batch axis out of what they sum over, ops whose
``axis``/``axes`` do not touch it, scans over another axis whose body is
row-wise too, and reshapes and slices that keep it as axis 0 unsliced.
Anything else fed a per-example value — and any type in which the batch dim
occurs in more than one axis — is not; stages.py then classifies the output
as opaque.
"""
from __future__ import annotations

from ..dims import Sym
from ..graph import SOURCE_OPS, Value

# elementwise / broadcasting ops: each output element reads the same position of its (broadcast) inputs
ELEMENTWISE = frozenset({
    "abs", "add", "sub", "mul", "div", "neg", "exp", "log", "pow", "sqrt", "sin", "cos", "floor", "floor_div", "mod",
    "sign", "relu", "relu_grad", "leaky_relu", "elu", "selu", "gelu", "swish", "softsign", "softplus", "sigmoid",
    "tanh", "clip", "cast", "identity", "stop_gradient", "maximum", "minimum", "where", "eq", "ne", "lt", "le", "gt",
    "ge", "logical_and", "logical_or", "logical_not", "random_like", "rand_like", "dropout", "bernoulli",
    "zeros_like", "broadcast_to", "fused", "sigmoid_xent", "bce_with_logits", "binary_cross_entropy", "mse",
    "l1_loss", "kl_normal", "sum_to",
})
# ops that move axes, add axes of size 1 or trailing ones per element (the batch axis keeps its dim)
MOVES = frozenset({"transpose", "unsqueeze", "squeeze", "one_hot", "embedding"})
# ops acting on the trailing axes of a batch-leading tensor (convolutions, pools, per-row losses, ...)
LEADING_BATCH = frozenset({
    "conv1d", "conv2d", "conv3d", "conv1d_grad_input", "conv2d_grad_input", "conv3d_grad_input",
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "max_pool1d", "max_pool2d", "max_pool3d",
    "max_pool1d_grad", "max_pool2d_grad", "max_pool3d_grad", "max_pool1d_pick", "max_pool2d_pick",
    "max_pool3d_pick", "avg_pool1d", "avg_pool2d", "avg_pool3d", "avg_pool1d_grad", "avg_pool2d_grad",
    "avg_pool3d_grad", "global_avg_pool", "global_max_pool", "instance_norm", "lrn", "upsample",
    "upsample_nearest", "softmax_xent", "accuracy", "binary_accuracy", "nll",
})
# ops whose ``axis``/``axes`` attribute names the axes of their first input they mix along
ALONG_AXES = frozenset({
    "softmax", "softmax_grad", "log_softmax", "argmax", "argmin", "sum", "count", "mean", "var", "std", "logsumexp",
    "reduce_max", "reduce_min", "cumsum", "flip", "l2_normalize", "concat", "split", "stack", "gather",
    "cross_entropy", "scan", "layer_norm", "layer_norm_grad", "tril", "triu",
})
RESHAPES = frozenset({"reshape", "flatten"})
SLICES = frozenset({"slice", "slice_grad", "pad"})


def row_wise(graph, rec, sharded: list, batch: frozenset[str]) -> bool:
    """Whether node ``rec`` computes each example's rows of its outputs from that example's
    rows of its ``sharded`` inputs alone (see the module docstring)."""
    in_types = [graph.type_of(v) for v in sharded]
    out_axes = [_batch_axes(t, batch) for t in rec.types]
    in_axes = [_batch_axes(t, batch) for t in in_types]
    if any(len(a) > 1 for a in out_axes + in_axes):  # [B, B]: examples against examples
        return False
    in_dims = {t.shape[a[0]] for t, a in zip(in_types, in_axes) if a}
    op = rec.op
    if op in RESHAPES:
        return all(a[0] == 0 for a in in_axes if a) and all(a == [0] for a in out_axes if a)
    # every batch axis of an output is the batch dim of an input, unchanged (not sliced, not 2·B)
    if any(a and t.shape[a[0]] not in in_dims for t, a in zip(rec.types, out_axes)):
        return False
    if op in MOVES:
        return True
    if op in ELEMENTWISE:  # broadcasting aligns trailing axes: the batch axis stays where it is, from the right
        return all(t.rank - a[0] == o.rank - b[0] for t, a in zip(in_types, in_axes) if a
                   for o, b in zip(rec.types, out_axes) if b)
    if op in SLICES:
        return all(a == [0] for a in in_axes + out_axes if a)
    if op in LEADING_BATCH:
        return all(a == [0] for a in in_axes + out_axes if a)
    if op in ("matmul", "matmul_t"):
        return _matmul_keeps_batch(graph, rec, sharded, batch)
    if op in ("layer_norm", "layer_norm_grad", "layer_norm_stats", "layer_norm_grad_stats"):
        # normalised along the axes from `axis` on of x (and dy; x̂ for the stats form)
        mixed = rec.inputs[:1] if op in ("layer_norm", "layer_norm_stats") else rec.inputs[:2]
        x = graph.type_of(mixed[-1])
        axis = rec.attrs.get("axis", -1) % max(x.rank, 1)
        return not any(a for v, a in zip(sharded, in_axes) if v in mixed and a[0] >= axis)
    if op in ALONG_AXES:
        x = graph.type_of(rec.inputs[0])
        mixed = _attr_axes(rec.attrs, x.rank)
        if op == "gather":  # the table's axis; gathering rows of a replicated table by per-example ids is fine
            return rec.inputs[0] not in sharded or not (set(_batch_axes(x, batch)) & mixed)
        if op == "scan":  # along the scanned axis of every sequence, and a body that keeps rows apart
            return not any(set(a) & mixed for a in in_axes) and _body_row_wise(rec, graph, sharded, batch)
        if op in ("concat", "stack", "split"):  # along the axis of every operand
            return not any(set(a) & mixed for a in in_axes)
        along = rec.inputs[:2] if op == "softmax_grad" else rec.inputs[:1]  # its dy and y alike
        return not any(set(a) & mixed for v, a in zip(sharded, in_axes) if v in along)
    return False


def _batch_axes(t, batch) -> list[int]:
    return [i for i, d in enumerate(t.shape) if isinstance(d, Sym) and _names(d) & batch]


def _names(d: Sym) -> set[str]:
    return {name for mono in d.terms for name, _ in mono}


def _attr_axes(attrs: dict, rank: int) -> set[int]:
    """The axes named by ``axis``/``axes`` (None or absent: every axis), normalised."""
    raw = attrs.get("axes", attrs.get("axis"))
    if raw is None:
        return set(range(rank))
    raw = [raw] if isinstance(raw, int) else list(raw)
    return {a % max(rank, 1) for a in raw}


def _matmul_keeps_batch(graph, rec, sharded, batch) -> bool:
    """No sharded operand has the batch axis among the contracted ones."""
    ta, tb = rec.attrs.get("ta", False), rec.attrs.get("tb", False)
    for slot, v in enumerate(rec.inputs[:2]):
        if v not in sharded:
            continue
        t = graph.type_of(v)
        axes = _batch_axes(t, batch)
        if not axes:
            continue
        if t.rank == 1:
            return False
        transposed = ta if slot == 0 else tb
        contracted = t.rank - 1 if (slot == 0) != transposed else t.rank - 2
        if axes[0] == contracted:
            return False
    return True


def _body_row_wise(rec, graph, sharded: list, batch: frozenset[str]) -> bool:
    """Whether a scan's body keeps the examples apart: no value of it whose type mentions the
    batch dim is computed from a mixture of examples (a reduction over the batch, an op that
    is not row-wise), the carries fed back until nothing changes.  Accumulators over the batch
    (a weight gradient's carry, no batch dim) are mixtures too, and fine while they feed
    nothing per-example."""
    body = rec.attrs["body"]
    outs = list(body.outputs.values())
    k = rec.attrs["n_carry"]
    rows = {Value(n) for n, v in zip(body.inputs, rec.inputs) if v in sharded}
    mixed: set = set()
    for _ in range(k + 1):  # the carries: a mixture fed back mixes the next step
        before = len(mixed)
        for n in body.topo_order():
            b = body[n]
            if b.op in SOURCE_OPS:
                continue
            ins_rows = [v for v in b.inputs if v in rows]
            for v, t in zip(body.out_values(n), b.types):
                if any(u in mixed for u in b.inputs):
                    mixed.add(v)
                elif ins_rows:
                    if _batch_axes(t, batch) and row_wise(body, b, ins_rows, batch):
                        rows.add(v)
                    else:
                        mixed.add(v)
        mixed |= {Value(body.inputs[i]) for i in range(k) if outs[i] in mixed}
        if len(mixed) == before:
            break
    return not any(_batch_axes(body.type_of(v), batch) for v in mixed)
