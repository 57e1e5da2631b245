"""Sound l2 operator-norm bounds for the layers of a feed-forward net, dense or convolutional, and
their product: the naive Lipschitz bound of any such net, computed without materialising a conv.

Convolutions. A 2D convolution with zero padding on an H x W input, any stride, is a restriction
of the full linear correlation of the kernel with the input (its outputs are a subset of the full
output's, and a stride only drops more of them). The full correlation equals the circular one on
an N1 x N2 torus with N1 >= H + kh - 1, N2 >= W + kw - 1 (no wrap-around reaches the kept outputs),
applied to the input embedded in that torus. Embedding and restriction have norm <= 1, so

    ||conv||_2  <=  ||circular conv on N1 x N2||_2  =  max over the N1 N2 frequencies w of
                                                       sigma_max(K^(w)),

with K^(w) = sum_{a,b} K[:, :, a, b] exp(-2 pi i (w1 a / N1 + w2 b / N2)) (c_out x c_in): the
circular operator is block-diagonalised by the 2D DFT (Sedghi et al. 2019). This is an upper bound
by construction (exact for circular padding), unlike power iteration, which approaches the norm
from below.

Strides. A stride s keeps every s-th output of that circular correlation. With the kernel placed
at offset -p on a torus whose sides are multiples of s (and long enough that no wrap-around
reaches a kept output), the strided conv is a restriction of "circular correlation, then keep the
positions that are multiples of s" (a torus of H + p rows is enough: every kept output reads
inputs -p .. H + p - 1). Keeping every s-th sample folds the s1 s2 frequencies
w + (k1 N1 / s1, k2 N2 / s2) onto one output frequency w, with factor 1 / sqrt(s1 s2) for
unitary DFTs (polyphase), so

    ||strided conv||_2  <=  max over the (N1/s1)(N2/s2) output frequencies w of
                            sigma_max([K^(w + k N / s)]_k) / sqrt(s1 s2),

a c_out x (c_in s1 s2) matrix per w. Ignoring the stride (the stride-1 bound) overestimates a
stride-2 conv by about a factor 2 on trained nets; folded, it is within a few percent of the
materialised norm. Everything is computed in float64, and each norm is inflated by SAFETY to
cover rounding in the FFT and the SVD.

Other layers (exactly the types and parameters :mod:`lipcore.trace` accepts): a dense layer's exact
spectral norm; a BatchNorm in eval mode max |gamma / sqrt(var + eps)|; an activation with slopes in
[alpha, beta] max(|alpha|, |beta|) (ReLU, tanh, ELU with alpha <= 1, LeakyReLU: 1;
sigmoid: 1/4); max pooling sqrt(m) and average pooling sqrt(m / (kh kw)), where each input falls in
at most m windows (m = 1 without overlap), since per window |max a - max b| <= ||a - b||_2 and |mean
a - mean b| <= ||a - b||_2 / sqrt(kh kw) (padding adds no window an input falls in: max pooling pads
with -inf, averaging counts the zeros); global average pooling 1 / sqrt(h w); flatten, identity and
dropout (in eval mode): 1; deel-torchlip's GroupSort (sorting within groups moves a vector no more
than its input) 1. A layer that multiplies its output by a constant (deel-torchlip's Lipschitz
coefficients) has that factor too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..trace import Op, batch_norm_scale, leaf_of, pair, trace

SAFETY = 1e-9          # relative inflation of every computed norm (rounding in FFT and SVD)


@dataclass
class LayerBound:
    """One layer's sound operator-norm bound."""

    layer: str
    bound: float
    input_shape: tuple[int, ...]


def conv2d_norm_bound(weight: torch.Tensor, input_hw: tuple[int, int],
                      stride: tuple[int, int] | int = 1, padding: tuple[int, int] | int = 0
                      ) -> float:
    """Sound upper bound on ||conv||_2 for kernel ``weight`` (c_out, c_in, kh, kw) applied to
    zero-padded inputs of spatial size ``input_hw`` with ``stride`` and ``padding`` (module
    docstring: the DFT bound, folded by the stride). Every torus of at least H + p rows gives a
    sound bound, and different sizes sample different frequencies: the least of two is kept."""
    kh, kw = weight.shape[-2:]
    (s1, s2), (p1, p2) = pair(stride), pair(padding)
    sizes = {(_multiple(max(h, kh), s1), _multiple(max(w, kw), s2))
             for h, w in ((input_hw[0] + p1, input_hw[1] + p2),
                          (input_hw[0] + max(kh - 1, p1), input_hw[1] + max(kw - 1, p2)))}
    w64 = weight.detach().cpu().double()
    return min(_folded_dft_norm(w64, n, (s1, s2), (p1, p2)) for n in sizes) * (1 + SAFETY)


def _multiple(n: int, s: int) -> int:
    return -(-n // s) * s


def _folded_dft_norm(weight: torch.Tensor, torus: tuple[int, int], stride: tuple[int, int],
                     padding: tuple[int, int]) -> float:
    """max_w sigma_max([K^(w + k N / s)]_k) / sqrt(s1 s2) on an n1 x n2 torus (module docstring),
    the kernel placed at offset -p. A real kernel's block at -w is the conjugate of the one at w
    (its columns permuted), with the same singular values, so half the frequencies suffice."""
    c_out, c_in, kh, kw = weight.shape
    (n1, n2), (s1, s2), (p1, p2) = torus, stride, padding
    placed = torch.zeros(c_out, c_in, n1, n2, dtype=torch.float64)
    rows, cols = (torch.arange(kh) - p1) % n1, (torch.arange(kw) - p2) % n2
    placed[:, :, rows[:, None], cols[None, :]] = weight
    spectrum = torch.fft.fft2(placed)                                  # c_out, c_in, n1, n2
    m1, m2 = n1 // s1, n2 // s2                                        # output frequencies
    folded = spectrum.reshape(c_out, c_in, s1, m1, s2, m2)[..., :m2 // 2 + 1]   # w + k N / s
    blocks = folded.permute(3, 5, 0, 1, 2, 4).reshape(-1, c_out, c_in * s1 * s2)
    return largest_singular_value(blocks) / math.sqrt(s1 * s2)


def largest_singular_value(blocks: torch.Tensor) -> float:
    """max sigma_max over a batch of float64 (complex) matrices: the top eigenvalue of each Gram
    matrix on the smaller side (a third of an SVD's time); forming it adds a relative error of
    about (its inner size) x eps to sigma^2, far below SAFETY."""
    rows, cols = blocks.shape[-2:]
    gram = blocks @ blocks.mH if rows <= cols else blocks.mH @ blocks
    return float(torch.linalg.eigvalsh(gram)[..., -1].max().clamp_min(0.0).sqrt())


def linear_norm(weight: torch.Tensor) -> float:
    """||W||_2 (exact up to rounding, inflated by SAFETY)."""
    return float(torch.linalg.matrix_norm(weight.detach().cpu().double(), ord=2)) * (1 + SAFETY)


def _windows_per_input(kernel: int, stride: int) -> int:
    """The most windows (per spatial axis) that one input position falls into."""
    return math.ceil(kernel / stride)


def op_bound(op: Op) -> float:
    """Sound l2 Lipschitz bound of one traced op (:mod:`lipcore.trace`) on its input shape."""
    gain = leaf_of(op.module).gain
    return _unscaled_bound(op) * (abs(gain(op.module, op.in_shape)) if gain else 1.0)


def _unscaled_bound(op: Op) -> float:
    m = op.module
    if op.kind == "affine":
        if isinstance(m, nn.Linear):
            return linear_norm(m.weight)
        return conv2d_norm_bound(m.weight, tuple(op.in_shape[-2:]), m.stride, m.padding)
    if op.kind == "activation":
        return max(abs(op.alpha), abs(op.beta))
    if op.kind == "scale":
        return float(batch_norm_scale(m).abs().max()) * (1 + SAFETY)
    if isinstance(m, nn.AdaptiveAvgPool2d):                    # global mean of h w inputs
        return math.nextafter(1 / math.sqrt(math.prod(op.in_shape[-2:])), math.inf)
    if op.kind == "pool":
        kernel, stride = pair(m.kernel_size), pair(m.stride or m.kernel_size)
        windows = math.prod(_windows_per_input(k, s) for k, s in zip(kernel, stride))
        return math.sqrt(windows if isinstance(m, nn.MaxPool2d) else windows / math.prod(kernel))
    return 1.0                                     # sort (1-Lipschitz), reshape, identity


def layer_bound(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Sound l2 Lipschitz bound of one layer on inputs of ``input_shape`` (no batch axis); a
    layer lipcore cannot analyse raises :class:`~lipcore.trace.NotAnalysable`."""
    (op,) = trace(module, input_shape).ops
    return op_bound(op)


def trace_layers(model: nn.Module, input_shape: tuple[int, ...]
                 ) -> list[tuple[nn.Module, tuple[int, ...], tuple[int, ...]]]:
    """(layer, input shape, output shape) in the order of one forward pass (no batch axis), for
    a model :func:`lipcore.trace.trace` can analyse (it refuses the rest)."""
    return [(op.module, op.in_shape, op.out_shape) for op in trace(model, input_shape).ops]


def layer_bounds(model: nn.Module, input_shape: tuple[int, ...] | None = None
                 ) -> list[LayerBound]:
    """Every layer's sound bound, with the input shape each one sees (:func:`lipcore.trace.trace`;
    ``input_shape`` may be left out for dense nets)."""
    return [LayerBound(type(op.module).__name__, op_bound(op), op.in_shape)
            for op in trace(model, input_shape).ops]


def layerwise_bound(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> float:
    """The naive bound: the product of every layer's sound bound. Sound for any feed-forward net
    built from the layers :func:`layer_bound` knows; exact-arithmetic conv norms from the DFT."""
    return math.prod(b.bound for b in layer_bounds(model, input_shape))
