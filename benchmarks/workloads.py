"""The five benchmark workloads: their specs, data at fixed seeds, and (when PyTorch is
importable) the same models in PyTorch with dlc's initial parameters copied in, so both
sides compute the same loss on the same batch (checked before anything is timed).

PyTorch is never a dependency of dlc: this module imports it only inside the
``torch_*`` builders, which bench.py calls when ``import torch`` works.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

SPECS = Path(__file__).resolve().parent / "specs"


@dataclass
class Workload:
    name: str
    title: str
    spec: Path
    batch: Callable[[int], dict]  # seed -> feeds
    torch_model: Callable  # (dlc params) -> (torch module computing the loss from the feeds, optimizer factory)


def _labels(rng, n, classes=10):
    return rng.integers(0, classes, size=n).astype(np.int64)


def mlp_batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((64, 784)).astype(np.float32), "y": _labels(rng, 64)}


def lenet_batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((64, 1, 28, 28)).astype(np.float32), "y": _labels(rng, 64)}


def lstm_batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"xs": rng.standard_normal((32, 32, 64)).astype(np.float32), "y": _labels(rng, 32)}


def transformer_batch(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((16, 64, 128)).astype(np.float32), "y": _labels(rng, 16)}


def gcn_batch(seed: int, nodes: int = 2708, features: int = 1433, edges: int = 5429) -> dict:
    """A Cora-sized graph: sparse binary features (row-normalised), random undirected edges,
    the symmetric normalised adjacency D^-1/2 (A + I) D^-1/2 as a dense matrix, 140 labelled nodes."""
    rng = np.random.default_rng(seed)
    x = (rng.random((nodes, features)) < 0.0127).astype(np.float32)
    x /= np.maximum(x.sum(1, keepdims=True), 1)
    a = np.zeros((nodes, nodes), np.float32)
    src, dst = rng.integers(0, nodes, edges), rng.integers(0, nodes, edges)
    a[src, dst] = a[dst, src] = 1
    np.fill_diagonal(a, 1)
    d = 1 / np.sqrt(a.sum(1))
    adj = (a * d[:, None] * d[None, :]).astype(np.float32)
    mask = np.zeros(nodes, np.float32)
    mask[rng.choice(nodes, 140, replace=False)] = 1
    return {"x": x, "adj": adj, "y": _labels(rng, nodes, 7), "mask": mask}


# -- PyTorch twins ------------------------------------------------------------------------------
def _t(a):
    import torch

    return torch.nn.Parameter(torch.from_numpy(np.array(a, np.float32)))


def torch_mlp(p):
    import torch
    import torch.nn.functional as F

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.ParameterList([_t(p[f"{k}.W"]) for k in ("h1", "h2", "logits")])
            self.b = torch.nn.ParameterList([_t(p[f"{k}.b"]) for k in ("h1", "h2", "logits")])

        def forward(self, x, y):
            h = F.relu(x @ self.w[0] + self.b[0])
            h = F.relu(h @ self.w[1] + self.b[1])
            return F.cross_entropy(h @ self.w[2] + self.b[2], y)

    m = MLP()
    return m, lambda: torch.optim.SGD(m.parameters(), lr=0.01)


def torch_lenet(p):
    import torch
    import torch.nn.functional as F

    class LeNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.k1, self.b1 = _t(p["c1.K"]), _t(p["c1.b"].reshape(-1))
            self.k2, self.b2 = _t(p["c2.K"]), _t(p["c2.b"].reshape(-1))
            self.w = torch.nn.ParameterList([_t(p[f"{k}.W"]) for k in ("f1", "f2", "logits")])
            self.b = torch.nn.ParameterList([_t(p[f"{k}.b"]) for k in ("f1", "f2", "logits")])

        def forward(self, x, y):
            h = F.max_pool2d(F.relu(F.conv2d(x, self.k1, self.b1, padding=2)), 2)
            h = F.max_pool2d(F.relu(F.conv2d(h, self.k2, self.b2)), 2)
            h = h.flatten(1)
            h = F.relu(h @ self.w[0] + self.b[0])
            h = F.relu(h @ self.w[1] + self.b[1])
            return F.cross_entropy(h @ self.w[2] + self.b[2], y)

    m = LeNet()
    return m, lambda: torch.optim.SGD(m.parameters(), lr=0.01)


def torch_lstm(p):
    import torch
    import torch.nn.functional as F

    class LSTM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch.nn.LSTM(64, 128, batch_first=True)
            with torch.no_grad():
                self.rnn.weight_ih_l0.copy_(torch.from_numpy(p["hs.Wx"].T.copy()))
                self.rnn.weight_hh_l0.copy_(torch.from_numpy(p["hs.Wh"].T.copy()))
                self.rnn.bias_ih_l0.copy_(torch.from_numpy(p["hs.b"]))
                self.rnn.bias_hh_l0.zero_()
            self.w, self.b = _t(p["logits.W"]), _t(p["logits.b"])

        def forward(self, xs, y):
            _, (h, _) = self.rnn(xs)
            return F.cross_entropy(h[0] @ self.w + self.b, y)

    m = LSTM()
    return m, lambda: torch.optim.Adam(m.parameters(), lr=1e-3)


def torch_transformer(p):
    import torch
    import torch.nn.functional as F

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            names = {"a.Wq": "a.Wq", "a.Wk": "a.Wk", "a.Wv": "a.Wv", "a.Wo": "a.Wo", "a.bo": "a.bo",
                     "a.gamma": "a_2.gamma", "a.beta": "a_2.beta", "h.W1": "h.W1", "h.b1": "h.b1", "h.W2": "h.W2",
                     "h.b2": "h.b2", "h.gamma": "h_2.gamma", "h.beta": "h_2.beta", "logits.W": "logits.W",
                     "logits.b": "logits.b"}  # torch name -> dlc name (the add_norm layers are a_2, h_2)
            self.p = torch.nn.ParameterDict({k.replace(".", "_"): _t(p[v]) for k, v in names.items()})

        def forward(self, x, y):
            q = self.p
            B, T, D = x.shape

            def heads(t):
                return t.reshape(B, T, 4, D // 4).transpose(1, 2)

            s = heads(x @ q["a_Wq"]) @ heads(x @ q["a_Wk"]).transpose(2, 3) * (D / 4) ** -0.5
            ctx = (s.softmax(-1) @ heads(x @ q["a_Wv"])).transpose(1, 2).reshape(B, T, D)
            a = F.layer_norm(x + ctx @ q["a_Wo"] + q["a_bo"], (D,), q["a_gamma"], q["a_beta"])
            f = F.relu(a @ q["h_W1"] + q["h_b1"]) @ q["h_W2"] + q["h_b2"]
            h = F.layer_norm(a + f, (D,), q["h_gamma"], q["h_beta"])
            return F.cross_entropy(h.mean(1) @ q["logits_W"] + q["logits_b"], y)

    m = Block()
    return m, lambda: torch.optim.Adam(m.parameters(), lr=1e-3)


def torch_gcn(p):
    import torch
    import torch.nn.functional as F

    class GCN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.b1 = _t(p["h.W"]), _t(p["h.b"])
            self.w2, self.b2 = _t(p["logits.W"]), _t(p["logits.b"])

        def forward(self, x, adj, y, mask):
            h = F.relu(adj @ (x @ self.w1) + self.b1)
            logits = adj @ (h @ self.w2) + self.b2
            return (F.cross_entropy(logits, y, reduction="none") * mask).sum() / mask.sum()

    m = GCN()
    return m, lambda: torch.optim.Adam(m.parameters(), lr=0.01)


WORKLOADS = [
    Workload("mlp", "MLP 784-512-512-10, batch 64, SGD", SPECS / "mlp.dl", mlp_batch, torch_mlp),
    Workload("lenet5", "LeNet-5, 1×28×28, batch 64, SGD", SPECS / "lenet5.dl", lenet_batch, torch_lenet),
    Workload("lstm", "LSTM T=32, B=32, in 64, h 128, Adam", SPECS / "lstm.dl", lstm_batch, torch_lstm),
    Workload("transformer", "Transformer block, B=16, T=64, d=128, 4 heads, Adam", SPECS / "transformer.dl",
             transformer_batch, torch_transformer),
    Workload("gcn", "GCN, 2,708 nodes, 1,433 features, dense adjacency, Adam", SPECS / "gcn.dl", gcn_batch,
             torch_gcn),
]
