"""RWKV-7 reference: one token at a time in numpy fp32, line by line after ../shared/RWKV7.md.

Small and obvious on purpose: the fast runtime is tested against it, and it against the
`rwkv` package. Params are a plain dict of float32 arrays with the checkpoint's names.
"""

from __future__ import annotations

import numpy as np

from edgewise.rwkv.checkpoint import Dims


def params_from(weights: dict, dims: Dims) -> dict[str, np.ndarray]:
    """float32 numpy arrays, 1-element dims squeezed ([1,1,C] -> [C])."""
    params = {}
    for key, tensor in weights.items():
        array = tensor.float().numpy()
        params[key] = array.reshape(-1) if array.ndim == 3 else array
    return params


def zero_state(dims: Dims) -> dict[str, np.ndarray]:
    L, C, H, N = dims.layers, dims.width, dims.heads, dims.head_size
    return {"att_prev": np.zeros((L, C), np.float32), "ffn_prev": np.zeros((L, C), np.float32),
            "S": np.zeros((L, H, N, N), np.float32)}


def layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * weight + bias


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def time_mix(p: dict, i: int, x: np.ndarray, state: dict, v_first: np.ndarray | None, dims: Dims):
    b, H, N = f"blocks.{i}.att.", dims.heads, dims.head_size
    xa = layer_norm(x, p[f"blocks.{i}.ln1.weight"], p[f"blocks.{i}.ln1.bias"])
    d = state["att_prev"][i] - xa
    state["att_prev"][i] = xa
    xr, xw, xk, xv, xa_, xg = (xa + d * p[b + n] for n in ("x_r", "x_w", "x_k", "x_v", "x_a", "x_g"))
    r, k, v = p[b + "receptance.weight"] @ xr, p[b + "key.weight"] @ xk, p[b + "value.weight"] @ xv
    w = np.exp(-0.606531 * sigmoid(p[b + "w0"] + np.tanh(xw @ p[b + "w1"]) @ p[b + "w2"]))
    a = sigmoid(p[b + "a0"] + (xa_ @ p[b + "a1"]) @ p[b + "a2"])
    g = sigmoid(xg @ p[b + "g1"]) @ p[b + "g2"]
    kk = (k * p[b + "k_k"]).reshape(H, N)
    kk = (kk / np.maximum(np.linalg.norm(kk, axis=1, keepdims=True), 1e-12)).reshape(-1)
    k = k * (1 + (a - 1) * p[b + "k_a"])
    if i == 0:
        v_first = v
    else:
        v = v + (v_first - v) * sigmoid(p[b + "v0"] + (xv @ p[b + "v1"]) @ p[b + "v2"])
    y = np.empty_like(r)
    for h in range(H):
        s = slice(h * N, (h + 1) * N)
        S = state["S"][i, h]                                               # [N value, N key]
        S = S * w[s][None, :] - np.outer(S @ kk[s], kk[s] * a[s]) + np.outer(v[s], k[s])
        state["S"][i, h] = S
        yh = S @ r[s]
        yh = (yh - yh.mean()) / np.sqrt(yh.var() + 64e-5) * p[b + "ln_x.weight"][s] + p[b + "ln_x.bias"][s]
        y[s] = yh + np.sum(r[s] * k[s] * p[b + "r_k"][h]) * v[s]
    return p[b + "output.weight"] @ (y * g), v_first


def channel_mix(p: dict, i: int, x: np.ndarray, state: dict) -> np.ndarray:
    b = f"blocks.{i}."
    xf = layer_norm(x, p[b + "ln2.weight"], p[b + "ln2.bias"])
    d = state["ffn_prev"][i] - xf
    state["ffn_prev"][i] = xf
    hidden = np.maximum(p[b + "ffn.key.weight"] @ (xf + d * p[b + "ffn.x_k"]), 0) ** 2
    return p[b + "ffn.value.weight"] @ hidden


def step(p: dict, token: int, state: dict, dims: Dims) -> np.ndarray:
    """Logits [V] after `token`; `state` is updated in place."""
    x = layer_norm(p["emb.weight"][token], p["blocks.0.ln0.weight"], p["blocks.0.ln0.bias"])
    v_first = None
    for i in range(dims.layers):
        dx, v_first = time_mix(p, i, x, state, v_first, dims)
        x = x + dx
        x = x + channel_mix(p, i, x, state)
    return p["head.weight"] @ layer_norm(x, p["ln_out.weight"], p["ln_out.bias"])


def forward(p: dict, tokens: list[int], state: dict | None, dims: Dims) -> tuple[np.ndarray, dict]:
    state = zero_state(dims) if state is None else {k: v.copy() for k, v in state.items()}
    for token in tokens:
        logits = step(p, token, state, dims)
    return logits.astype(np.float32), state
