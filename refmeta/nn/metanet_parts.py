"""The building blocks of Meta Networks (``refmeta.metanet``): learner network, m, d, attention.

Learner network (the base learner b and the representation function u share it; the authors'
MetaNetFull uses 5 blocks of 64 filters, no biases, no batch norm):

    block ℓ  h ← pool(φ(conv(h, W_ℓ)) + φ(conv(h, W*_ℓ)))      φ = ReLU, pool = 2×2 max, stride 2   (B)
    fc1      h ← φ(h W_fc1) + φ(h W*_fc1)        in b;    r = h W_fc1 + h W*_fc1   in u         (F)
    out      logits = h W_out + h W*_out          in b     (linear, like the authors' fc2)      (L)

The blocks take an image side s to 1: ``rounding`` "floor" halves s to ⌊s/2⌋ (PyTorch's default
pool: 28 → 14 → 7 → 3 → 1 in 4 blocks), "ceil" to ⌈s/2⌉ (Chainer's max_pooling_2d, whose
cover_all=True is its default: the authors' 28 → 14 → 7 → 4 → 2 → 1 in 5 blocks; with floor
rounding 5 blocks cannot take 28 to 1, 7 → 3 → 1 → 0).  ``image_sides`` gives the sides that
end at 1×1 with the last pool reading at least 2 pixels.
A layer without fast weights is just φ(conv(h, W_ℓ)) (resp. h W): with every fast weight zero
the augmented network *is* the slow-weight network, because φ(0) = 0.  Fast weights may carry
a leading axis (one set per query, ``(L, ...)``, data ``(L, 1, C, H, W)``); slow weights never do.

Meta-information preprocessing (Andrychowicz et al. 2016, Appendix A; the authors' logAndSign):

    pre(g) = ( log(|g|) / p, sgn(g) )   if |g| ≥ e^{−p}
             ( −1,           e^p g )    otherwise
           = ( log(max(|g|, e^{−p})) / p,  clip(e^p g, −1, 1) )         the form computed here   (P)

m (example-level weight generator, Z) is an MLP applied to every coordinate of a gradient:
    m(Z, pre(g)) = v₂ᵀ φ(V₁ᵀ φ(V₀ᵀ pre(g) + c₀) + c₁) + c₂      2 → 20 → 20 → 1                 (M)
d (task-level weight generator, G) is an LSTM run over T gradients, again per coordinate:
    z_t = pre(g_t) A + s_{t−1} B + e,    z = [z_a, z_i, z_f, z_o]    (Chainer's gates; layout below)
    c_t = tanh(z_a) σ(z_i) + σ(z_f) c_{t−1},   s_t = σ(z_o) tanh(c_t),   d = s_T w + b         (D)
    with s_0 = c_0 = 0.
The gates are Chainer's (a, i, f, o), but not its column layout.  Chainer's ``F.lstm``
interleaves them: column j of its (4H,) pre-activation belongs to gate j mod 4, unit j // 4.
refmeta stores contiguous blocks: columns k·H … (k+1)·H − 1 of "wx" (2, 4H), "wh" (H, 4H) and
"b" (4H,) are gate k of (a, i, f, o).  To load the authors' ``L.LSTM(2, H)`` (Chainer's Linear
keeps W as (out, in)), take perm = arange(4H).reshape(H, 4).T.ravel(), i.e. perm[k·H + u] =
4u + k, and set wx = upward.W[perm].T, wh = lateral.W[perm].T, b = upward.b[perm].
There is one m and one d for convolution kernels ("conv") and one each for dense matrices
("dense"), as in the authors' code.  Initialisation is Chainer 1.x's default: W ~ N(0, 1/fan_in),
biases 0.

These parts check nothing: ``refmeta.metanet`` validates its inputs at its public entries
(images that the conv blocks take to 1×1, a memory with one slot per support example).
"""

import autograd.numpy as anp
import numpy as np
from autograd import grad
from autograd.tracer import getval

from refmeta import checks
from refmeta.nn import kinks, layers, losses

KINDS = ("conv", "dense")
HIDDEN_M = 20   # the authors' m: Linear(2, 20) → ReLU → Linear(20, 20) → ReLU → Linear(20, 1)
HIDDEN_D = 20   # the authors' d: LSTM(2, 20) → Linear(20, 1)


def _normal(rng, fan_in, shape):
    return rng.standard_normal(shape) / np.sqrt(fan_in)


# ----- the learner network -----
def learner_init(rng, in_channels=1, hidden=64, n_blocks=4, n_out=5):
    """Host params {"conv{i}.w" (F, C, 3, 3), "fc1.w" (F, F), "out.w" (F, n_out)}; no biases.

    The feature vector after ``n_blocks`` 2×2 pools is F·1·1: choose n_blocks and the pools'
    rounding so that the image side shrinks to 1 (``image_sides``).
    """
    params, channels = {}, in_channels
    for i in range(n_blocks):
        params[f"conv{i}.w"] = _normal(rng, channels * 9, (hidden, channels, 3, 3))
        channels = hidden
    params["fc1.w"] = _normal(rng, hidden, (hidden, hidden))
    params["out.w"] = _normal(rng, hidden, (hidden, n_out))
    return params


def image_sides(n_blocks, rounding="floor"):
    """(smallest, largest) image side that ``n_blocks`` 2×2 pools take to 1, the last pool on
    2 or 3 pixels (floor: 2^n … 2^(n+1) − 1) or on 2 (ceil: 2^(n−1) + 1 … 2^n)."""
    checks.choice("rounding", rounding, ("floor", "ceil"))
    if rounding == "floor":
        return 2 ** n_blocks, 2 ** (n_blocks + 1) - 1
    return 2 ** (n_blocks - 1) + 1, 2 ** n_blocks


def layer_kind(name):
    """"conv" for a convolution kernel, "dense" for a matrix: which m and d serve it."""
    return "conv" if name.split(".")[-2].startswith("conv") else "dense"


def _conv_shared(x, w):
    """conv2d with one unbatched kernel over all leading axes of x (one big matrix product)."""
    lead = anp.shape(x)[:-3]
    flat = anp.reshape(x, (-1,) + anp.shape(x)[-3:])
    out = layers.conv2d(flat, w)
    return anp.reshape(out, lead + anp.shape(out)[-3:])


def _conv_layer(h, w):
    return _conv_shared(h, w) if anp.ndim(w) == 4 else layers.conv2d(h, w)


def features(params, x, fast=None, rounding="floor"):
    """The conv blocks (B): x (..., n, C, H, W) -> (..., n, F).  ``fast``: {"conv{i}.w": W*} or None;
    ``rounding``: the pools' ("floor" or "ceil")."""
    fast = fast or {}
    h, i = x, 0
    while f"conv{i}.w" in params:
        name = f"conv{i}.w"
        out = layers.relu(_conv_layer(h, params[name]))
        if name in fast:
            out = out + layers.relu(_conv_layer(h, fast[name]))
        h = layers.max_pool_2x2(out, rounding)
        i += 1
    return anp.reshape(h, anp.shape(h)[:-3] + (anp.shape(h)[-3],))


def _dense(h, params, fast, name, nonlinear):
    """φ(h W) + φ(h W*) (nonlinear) or h W + h W* (linear); the W* term only if given."""
    act = layers.relu if nonlinear else (lambda z: z)
    out = act(anp.matmul(h, params[name]))
    return out + act(anp.matmul(h, fast[name])) if fast and name in fast else out


def base_logits(params, x, fast=None, rounding="floor"):
    """b(W, W*, x): logits (..., n, n_out) of the layer-augmented base learner, (B), (F), (L)."""
    h = _dense(features(params, x, fast, rounding), params, fast, "fc1.w", nonlinear=True)
    return _dense(h, params, fast, "out.w", nonlinear=False)


def representation(params, x, fast=None, rounding="floor"):
    """u(Q, Q*, x): the representation (..., n, F), (B) then fc1 (F) taken linearly (the authors'
    keys)."""
    return _dense(features(params, x, fast, rounding), params, fast, "fc1.w", nonlinear=False)


def slow_logits(params, x, rounding="floor"):
    """The slow network φ(f W_fc1) W_out: b(W, x') in (9), and u's head under loss_emb in (2)."""
    return base_logits(params, x, None, rounding)


def group_losses(net, x, y, rounding="floor"):
    """The mean cross-entropy of the slow network on every group: x (G, n, C, H, W), y (G, n) ->
    (G,) (Meta Networks' L_t of u on a chunk, L_i of b on one support example)."""
    return losses.cross_entropy(slow_logits(net, x, rounding), y, check=False)


def group_gradients(net, names, x, y, second_order, rounding="floor"):
    """∇ of ``group_losses``, per group: x (G, n, C, H, W), y (G, n) -> {name: (G, ...)} for the
    layers ``names``, each group on its own broadcast copy of the weights, so one ``grad`` gives
    every group's exact gradient; constants unless second_order."""
    if not second_order:
        net = {k: getval(v) for k, v in net.items()}
    copies = {k: anp.broadcast_to(net[k][None], anp.shape(x)[:1] + anp.shape(net[k])) for k in names}
    return grad(lambda c: anp.sum(group_losses({**net, **c}, x, y, rounding)))(copies)


# ----- preprocessing, m and d -----
def preprocess(g, p):
    """(P): g (...) -> (..., 2): (log(max(|g|, e^−p)) / p, clip(e^p g, −1, 1))."""
    floor = float(np.exp(-p))
    kinks.switch(g, floor)                          # both parts switch at |g| = e^−p
    log_part = anp.log(anp.maximum(anp.abs(g), floor)) / p
    sign_part = anp.clip(g * float(np.exp(p)), -1.0, 1.0)
    return anp.stack([log_part, sign_part], axis=-1)


def meta_init(rng, output_scale=1.0):
    """Host params of m and d for both kinds: "m.{kind}.l{0,1,2}.{w,b}", "d.{kind}.{wx,wh,b,out.w,out.b}".

    ``output_scale`` multiplies the initial weights of m's and d's last layers (1: Chainer's
    default, as the authors'), so the first fast weights are that much smaller."""
    params = {}
    for kind in KINDS:
        for i, (d_in, d_out) in enumerate([(2, HIDDEN_M), (HIDDEN_M, HIDDEN_M), (HIDDEN_M, 1)]):
            params[f"m.{kind}.l{i}.w"] = _normal(rng, d_in, (d_in, d_out)) * (output_scale if i == 2 else 1)
            params[f"m.{kind}.l{i}.b"] = np.zeros(d_out)
        params[f"d.{kind}.wx"] = _normal(rng, 2, (2, 4 * HIDDEN_D))
        params[f"d.{kind}.wh"] = _normal(rng, HIDDEN_D, (HIDDEN_D, 4 * HIDDEN_D))
        params[f"d.{kind}.b"] = np.zeros(4 * HIDDEN_D)
        params[f"d.{kind}.out.w"] = _normal(rng, HIDDEN_D, (HIDDEN_D, 1)) * output_scale
        params[f"d.{kind}.out.b"] = np.zeros(1)
    return params


def example_generator(params, kind, meta_info):
    """m(Z, ·) (M): meta_info (..., 2) -> fast weights (...), coordinate by coordinate."""
    h = anp.reshape(meta_info, (-1, 2))             # one row per coordinate: a single matmul
    for i in range(3):
        h = anp.matmul(h, params[f"m.{kind}.l{i}.w"]) + params[f"m.{kind}.l{i}.b"]
        h = layers.relu(h) if i < 2 else h
    return anp.reshape(h, anp.shape(meta_info)[:-1])


def task_generator(params, kind, meta_infos):
    """d(G, ·) (D): meta_infos (T, ..., 2), one per gradient, -> fast weights (...)."""
    state = cell = None
    for meta_info in meta_infos:
        z = anp.matmul(anp.reshape(meta_info, (-1, 2)), params[f"d.{kind}.wx"]) + params[f"d.{kind}.b"]
        if state is not None:
            z = z + anp.matmul(state, params[f"d.{kind}.wh"])
        a, i, f, o = (z[..., k * HIDDEN_D:(k + 1) * HIDDEN_D] for k in range(4))
        cell = anp.tanh(a) * layers.sigmoid(i) + (0.0 if cell is None else layers.sigmoid(f) * cell)
        state = layers.sigmoid(o) * anp.tanh(cell)
    out = anp.matmul(state, params[f"d.{kind}.out.w"]) + params[f"d.{kind}.out.b"]
    return anp.reshape(out, anp.shape(meta_infos)[1:-1])


# ----- attention and the memory read -----
def cosine_attention(memory_keys, queries, eps=1e-6):
    """a_ij = r_i·R_j / √(|r_i|² |R_j|² + eps): queries (L, d), keys (N, d) -> (L, N)."""
    dots = anp.matmul(queries, anp.swapaxes(memory_keys, -1, -2))
    norms = anp.sum(queries * queries, axis=-1)[:, None] * anp.sum(memory_keys * memory_keys, axis=-1)
    return dots / anp.sqrt(norms + eps)


def softmax(a):
    z = a - anp.max(a, axis=-1, keepdims=True)
    e = anp.exp(z)
    return e / anp.sum(e, axis=-1, keepdims=True)


def read_memory(memory, weights):
    """W*_i = Σ_j weights_ij M_j, for every leaf: memory {name: (N, ...)}, weights (L, N)."""
    n_slots = anp.shape(weights)[-1]
    out = {}
    for name in sorted(memory):
        slots = anp.shape(memory[name])                                 # (N, ...)
        flat = anp.reshape(memory[name], (n_slots, -1))
        out[name] = anp.reshape(anp.matmul(weights, flat), anp.shape(weights)[:-1] + slots[1:])
    return out


def describe(in_channels, hidden, n_blocks, n_way, base_fast, rep_fast, pool_rounding="floor"):
    """A JSON-able description of θ's networks, complete enough to rebuild them; ``layers``
    names every parameter (base_fast / rep_fast: the augmented layers of b and u)."""
    layers_, edge = [], {"floor": "odd edge dropped", "ceil": "ceil mode: a window at an odd edge "
                         "covers its last row or column alone (Chainer cover_all=True)"}[pool_rounding]
    for net, role, fast in (("base", "b, the base learner", base_fast),
                            ("rep", "u, the representation", rep_fast)):
        for i in range(n_blocks):
            layers_.append({"type": "conv2d", "role": f"{role}: block {i}", "weight": f"{net}.conv{i}.w",
                            "bias": None, "in_channels": hidden if i else in_channels, "out_channels": hidden,
                            "kernel_size": [3, 3], "stride": 1, "padding": 1, "weight_layout": "OIHW",
                            "operation": "cross-correlation (PyTorch Conv2d, padding=1)",
                            "then": "ReLU (φ(conv(h, W)) + φ(conv(h, W*)) if augmented), then 2×2 "
                                    f"max-pool stride 2, {edge}", "augmented": f"conv{i}.w" in fast})
        layers_.append({"type": "dense", "role": f"{role}: fc1 on the flattened 1×1 maps",
                        "weight": f"{net}.fc1.w", "bias": None, "shape": [hidden, hidden],
                        "weight_layout": "(in, out): x @ w", "augmented": True})
        layers_.append({"type": "dense", "role": f"{role}: output layer", "weight": f"{net}.out.w",
                        "bias": None, "shape": [hidden, n_way], "weight_layout": "(in, out): x @ w",
                        "augmented": "out.w" in fast})
    for kind in ("conv", "dense"):
        for i, (d_in, d_out) in enumerate([(2, HIDDEN_M), (HIDDEN_M, HIDDEN_M), (HIDDEN_M, 1)]):
            then = ", then ReLU" if i < 2 else ""
            layers_.append({"type": "dense", "role": f"m for {kind} weights, layer {i}{then}",
                            "weight": f"m.{kind}.l{i}.w", "bias": f"m.{kind}.l{i}.b", "shape": [d_in, d_out],
                            "weight_layout": "(in, out): x @ w + b"})
        layers_.append({"type": "lstm_gates", "role": f"d for {kind} weights: z = x wx + s wh + b, split "
                        "(a, i, f, o); c = tanh(a) σ(i) + σ(f) c; s = σ(o) tanh(c); s_0 = c_0 = 0",
                        "weight": f"d.{kind}.wx", "bias": f"d.{kind}.b", "shape": [2, 4 * HIDDEN_D]})
        layers_.append({"type": "dense", "role": f"d for {kind} weights: recurrent input, no bias",
                        "weight": f"d.{kind}.wh", "bias": None, "shape": [HIDDEN_D, 4 * HIDDEN_D]})
        layers_.append({"type": "dense", "role": f"d for {kind} weights: output s_T w + b",
                        "weight": f"d.{kind}.out.w", "bias": f"d.{kind}.out.b", "shape": [HIDDEN_D, 1]})
    return {"model": "metanet", "layers": layers_, "dtype": "float64",
            "base_learner": "logits = h1 W_out + h1 W*_out, h1 = relu(f W_fc1) + relu(f W*_fc1), "
                            "f = blocks(x)",
            "representation": "r = f Q_fc1 + f Q*_fc1 (no ReLU), f = u's blocks with Q*",
            "slow_head": "relu(f W_fc1) W_out with slow weights only: b's loss in (9), u's loss_emb in (2)",
            "m_and_d": "per coordinate of a weight: input pre(g) (2,), output one number; m.conv and d.conv "
                       "serve conv kernels, m.dense and d.dense fc1 and out",
            "preprocess": "(log(max(|g|, e^-p)) / p, clip(e^p g, -1, 1))",
            "init": "Chainer 1.x defaults: W ~ N(0, 1/fan_in), biases 0; m's and d's last layers "
                    "× fast_init_scale"}
