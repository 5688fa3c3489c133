"""Random well-typed graphs for the fuzz tests: a pool of values, ops chosen and
operands matched so every shape rule is satisfied (elementwise broadcasting,
matmul inner dims, reductions, transposes, reshapes), finished by a scalar loss.

Inputs of the partial functions are made safe by construction (``sqrt(x*x + 1)``,
``log(exp(x) + 1)``, a divisor ``x*x + 0.5``), so every value is finite and the
NumPy/onnxruntime comparison and the finite-difference gradients are meaningful."""
from __future__ import annotations

import random

import numpy as np

from dlc.compiler.builder import Builder
from dlc.compiler.graph import Graph
from dlc.compiler.types import TensorType

from op_harness import graph_param

UNARY = ["tanh", "sigmoid", "relu", "sin", "cos", "neg", "abs", "softplus", "exp_safe", "sqrt_safe", "log_safe",
         "square"]
BINARY = ["add", "sub", "mul", "maximum", "minimum", "div_safe", "where_gt"]


def _unary(b: Builder, op: str, x):
    if op == "exp_safe":
        return b.exp(b.tanh(x))
    if op == "sqrt_safe":
        return b.sqrt(b.add(b.mul(x, x), 1.0))
    if op == "log_safe":
        return b.log(b.add(b.exp(b.tanh(x)), 1.0))
    if op == "square":
        return b.mul(x, x)
    if op == "softplus":
        return b.apply("softplus", x)
    return b.apply(op, x)


def _binary(b: Builder, op: str, x, y):
    if op == "div_safe":
        return b.div(x, b.add(b.mul(y, y), 0.5))
    if op == "where_gt":
        return b.where(b.gt(x, y), x, b.mul(y, 0.5))
    return b.apply(op, x, y)


def random_graph(rng: random.Random, n_ops: int = 8):
    """(graph, params) with float64 parameters p0.. and one scalar output ``loss``."""
    g = Graph("fuzz")
    b = Builder(g, mode="train")
    dims = [1, 2, 3, 4]
    pool, params = [], {}
    nprng = np.random.default_rng(rng.randrange(2**32))

    def new_param(shape):
        name = f"p{len(params)}"
        v = graph_param(g, name, TensorType("f64", tuple(shape)))
        params[name] = nprng.standard_normal(shape)
        pool.append(v)
        return v

    for _ in range(rng.randint(1, 3)):
        new_param([rng.choice(dims) for _ in range(rng.randint(0, 3))])
    for _ in range(n_ops):
        kind = rng.choice(["unary", "unary", "binary", "binary", "matmul", "reduce", "transpose", "reshape",
                           "softmax"])
        x = rng.choice(pool)
        t = b.type(x)
        if kind == "unary":
            pool.append(_unary(b, rng.choice(UNARY), x))
        elif kind == "binary":
            # the other operand: an existing value that broadcasts, or a new parameter of a compatible shape
            fits = [v for v in pool if _broadcasts(b.type(v).shape, t.shape)]
            y = rng.choice(fits) if fits and rng.random() < 0.6 else new_param(
                [d if rng.random() < 0.7 else 1 for d in t.shape[rng.randint(0, t.rank):]])
            pool.append(_binary(b, rng.choice(BINARY), x, y) if rng.random() < 0.5 else
                        _binary(b, rng.choice(BINARY), y, x))
        elif kind == "matmul" and t.rank >= 1:
            w = new_param([t.shape[-1], rng.choice(dims)])
            pool.append(b.apply("matmul", x, w))
        elif kind == "reduce" and t.rank >= 1:
            axis = rng.randrange(t.rank)
            pool.append(b.apply(rng.choice(["sum", "mean", "reduce_max"]), x, axes=(axis,),
                                keepdims=rng.random() < 0.5))
        elif kind == "transpose" and t.rank >= 2:
            perm = list(range(t.rank))
            rng.shuffle(perm)
            pool.append(b.apply("transpose", x, perm=tuple(perm)))
        elif kind == "reshape" and t.rank >= 1:
            size = int(np.prod(t.shape))
            pool.append(b.apply("reshape", x, shape=(size,) if rng.random() < 0.5 else (1, size)))
        elif kind == "softmax" and t.rank >= 1:
            pool.append(b.apply("softmax", x, axis=-1))
    # every value feeds the loss, so every gradient path is exercised
    total = None
    for v in pool[-4:]:
        s = b.apply("sum", b.mul(v, v) if rng.random() < 0.5 else v)
        total = s if total is None else b.add(total, s)
    g.set_output("loss", total)
    return g, params


def _broadcasts(small, big) -> bool:
    if len(small) > len(big):
        return False
    return all(s in (1, d) for s, d in zip(reversed(small), reversed(big)))
