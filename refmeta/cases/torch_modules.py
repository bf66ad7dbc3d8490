"""The torch modules of the case format's layers that torch.nn lacks as such, each in torch's
own layout (``refmeta.cases.torch`` builds a case's network from them and from nn.Linear,
nn.MaxPool2d, ...).  Imported only through ``refmeta.cases.torch``, which says what to install
when torch is missing."""

import math

import torch
from torch import nn
from torch.nn import functional as F

ACTIVATIONS = {None: lambda x: x, "relu": torch.relu, "tanh": torch.tanh}


class Augmented(nn.Module):
    """φ(layer(x)) + φ(layer(x) with the fast weight W* in place of W, no bias): a dense or conv
    layer with an ``activation`` (and Meta Networks' fast term when ``augmented``)."""

    def __init__(self, layer, activation):
        super().__init__()
        self.layer, self.activation = layer, activation

    def forward(self, x, fast=None):
        phi = ACTIVATIONS[self.activation]
        out = phi(self.layer(x))
        if fast is None:
            return out
        if isinstance(self.layer, nn.Linear):
            return out + phi(F.linear(x, fast))
        return out + phi(F.conv2d(F.pad(x, self.layer.pad), fast, None, self.layer.stride))


class PaddedConv2d(nn.Conv2d):
    """nn.Conv2d after explicit zero padding ``pad`` = (left, right, top, bottom)."""

    def __init__(self, *args, pad, **kwargs):
        super().__init__(*args, padding=0, **kwargs)
        self.pad = pad

    def forward(self, x):
        return super().forward(F.pad(x, self.pad))


class BatchNorm(nn.Module):
    """Batch norm with the case's offset (``bias``) and scale (``weight``), each a parameter only
    if the case names it (a missing scale is a constant ones buffer); the statistics of the
    batch at hand ("transductive"), or the ``running`` (mean, variance) given."""

    def __init__(self, scale, offset, eps, channels, running=None):
        super().__init__()
        self.eps, self.running = eps, running is not None
        self.weight = None if scale is None else nn.Parameter(scale.clone())
        self.bias = None if offset is None else nn.Parameter(offset.clone())
        channels = next((p.shape[0] for p in (scale, offset) if p is not None), channels)
        self.register_buffer("ones", torch.ones(channels) if scale is None else None)
        self.register_buffer("running_mean", running[0] if running else None)
        self.register_buffer("running_var", running[1] if running else None)

    def forward(self, x):
        weight = self.ones if self.weight is None else self.weight
        return F.batch_norm(x, self.running_mean, self.running_var, weight, self.bias,
                            training=not self.running, eps=self.eps)


class SpatialMean(nn.Module):
    """(..., C, H, W) -> (..., C): the "mean" layer."""

    def forward(self, x):
        return x.mean(dim=(-2, -1))


class LSTMGates(nn.Module):
    """One LSTM cell in nn.LSTMCell's layout (gates i, f, g, o) with one bias and any recurrent
    width r: z = x W_ihᵀ + r W_hhᵀ + b; c' = σ(f) c + σ(i) tanh(g); h' = σ(o) tanh(c')."""

    def __init__(self, weight_ih, weight_hh, bias_ih):
        super().__init__()
        self.weight_ih = nn.Parameter(weight_ih.clone())
        self.weight_hh = nn.Parameter(weight_hh.clone())
        self.bias_ih = None if bias_ih is None else nn.Parameter(bias_ih.clone())

    def forward(self, x, state):
        recurrent, c = state
        i, f, g, o = (F.linear(x, self.weight_ih, self.bias_ih)
                      + F.linear(recurrent, self.weight_hh)).chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class CausalConv1d(nn.Conv1d):
    """nn.Conv1d on a time-major sequence (..., T, C), padded on the left only: y_t reads steps
    t, t − dilation, ... ."""

    def forward(self, x):
        lead = x.shape[:-2]
        x = x.reshape((-1,) + x.shape[-2:]).transpose(-1, -2)          # (B, C, T)
        y = super().forward(F.pad(x, ((self.kernel_size[0] - 1) * self.dilation[0], 0)))
        return y.transpose(-1, -2).reshape(lead + (y.shape[-1], y.shape[-2]))


class GatedConcat(nn.Module):
    """A DenseBlock: concat(x, tanh(filter(x)) ⊙ σ(gate(x))) along channels."""

    def __init__(self, filter_, gate):
        super().__init__()
        self.filter, self.gate = filter_, gate

    def forward(self, x):
        return torch.cat([x, torch.tanh(self.filter(x)) * torch.sigmoid(self.gate(x))], dim=-1)


class CausalAttention(nn.Module):
    """An AttentionBlock: concat(x, P v), P_ts = softmax over s ≤ t of q_t·k_s / √key_size."""

    def __init__(self, query, key, value, key_size):
        super().__init__()
        self.query, self.key, self.value, self.key_size = query, key, value, key_size

    def forward(self, x):
        logits = self.query(x) @ self.key(x).transpose(-1, -2) / math.sqrt(self.key_size)
        steps = x.shape[-2]
        future = torch.ones(steps, steps, dtype=torch.bool, device=x.device).triu(1)
        probs = torch.softmax(logits.masked_fill(future, -math.inf), dim=-1)
        return torch.cat([x, probs @ self.value(x)], dim=-1)
