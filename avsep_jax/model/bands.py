"""Band split of a spectrogram into (frame, band) tokens, and the per-band head that
turns tokens back into a complex ratio mask over every bin.

Bands are finer at low frequency, where speech has its harmonics and formants
(BS-RoFormer, BSRNN). A layout is ((width, count), ...) in bins, low to high; the last
band takes the bins the layout leaves over (the Nyquist bin at n_fft 512). Each band has
its own input and output weights; bands narrower than the widest are zero-padded to it
so that one einsum serves every band (the padding carries zeros in and is dropped out).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from avsep_jax.model import layers


def band_edges(num_bins: int, layout) -> tuple[tuple[int, int], ...]:
  """((start, stop), ...) bin ranges covering [0, num_bins), low to high.

  Raises:
    ValueError: when the layout needs more bins than there are.
  """
  edges, start = [], 0
  for width, count in layout:
    for _ in range(count):
      edges.append((start, start + width))
      start += width
  if not edges or start > num_bins:
    raise ValueError(f"band layout {tuple(layout)} needs {start} bins; the spectrum has "
                     f"{num_bins}")
  edges[-1] = (edges[-1][0], num_bins)
  return tuple(edges)


def _gather_index(edges):
  """(K, W) bin index of each band slot (0 where padded) and its (K, W) validity."""
  width = max(stop - start for start, stop in edges)
  index = np.zeros((len(edges), width), np.int32)
  valid = np.zeros((len(edges), width), bool)
  for k, (start, stop) in enumerate(edges):
    index[k, :stop - start] = np.arange(start, stop)
    valid[k, :stop - start] = True
  return index, valid


def compressed_features(spec, power: float):
  """(..., F) complex -> (..., F, 2) real and imaginary parts of |X|^power e^{i angle X}.

  Power-law compression (Looking to Listen: 0.3) narrows the dynamic range the first
  layer sees without discarding the phase. The spectrum should come from an
  RMS-normalised mixture so the features do not depend on the recording's level.
  """
  mag = jnp.abs(spec)
  scale = jnp.where(mag > 0, (mag + 1e-12) ** (power - 1.0), 0.0)
  return jnp.stack([spec.real * scale, spec.imag * scale], axis=-1).astype(jnp.float32)


def _per_band_dense(module, x, features, *, prefix, axes, scale=1.0,
                    bias_init=nn.initializers.zeros_init()):
  """(..., K, c) -> (..., K, features) with its own kernel (K, c, features) and bias
  (K, features) per band, named `{prefix}kernel` and `{prefix}bias`.

  axes: logical names of (c, features); scale: the fan-in variance scale of the
  kernel's normal init (small for an output layer that should start near its bias).
  """
  k, c = x.shape[-2:]
  kernel = module.param(f"{prefix}kernel", nn.with_logical_partitioning(
      nn.initializers.variance_scaling(scale, "fan_in", "normal", in_axis=1, out_axis=2),
      (None, *axes)), (k, c, features), module.param_dtype)
  bias = module.param(f"{prefix}bias", nn.with_logical_partitioning(
      bias_init, (None, axes[1])), (k, features), module.param_dtype)
  return (jnp.einsum("...kc,kcd->...kd", x.astype(module.dtype),
                     kernel.astype(module.dtype)) + bias.astype(module.dtype))


class BandSplit(nn.Module):
  """(..., T, F, C) per-bin features -> (..., T, K, d) band tokens: one Dense per band.

  Attributes:
    edges: `band_edges(...)`.
    d_model: token width.
  """

  edges: tuple[tuple[int, int], ...]
  d_model: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    index, valid = _gather_index(self.edges)
    k, w = index.shape
    c = x.shape[-1]
    x = x[..., index, :] * jnp.asarray(valid)[..., None]          # (..., T, K, W, C)
    x = x.reshape(x.shape[:-2] + (w * c,))
    return _per_band_dense(self, x, self.d_model, prefix="", axes=(None, layers.EMBED))


class BandMask(nn.Module):
  """(..., T, K, d) tokens -> (..., T, F) complex ratio mask, unbounded.

  Per band: LayerNorm -> Dense(hidden) -> tanh -> Dense(2 x width) (real, imaginary),
  as BS-RoFormer's mask estimator (without its GLU). The output bias starts at
  1/2 + 0i, so every slot starts by passing half the mixture: a non-zero estimate from
  the first step (SI-SNR has no gradient at zero) that the slots then pull apart.

  Attributes:
    edges: `band_edges(...)`.
    hidden: width of the per-band hidden layer.
  """

  edges: tuple[tuple[int, int], ...]
  hidden: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    index, valid = _gather_index(self.edges)
    k, w = index.shape
    x = layers.layer_norm(name="ln", dtype=self.dtype, param_dtype=self.param_dtype)(x)
    h = jnp.tanh(_per_band_dense(self, x, self.hidden, prefix="hidden_",
                                 axes=(layers.EMBED, layers.MLP)))
    out = _per_band_dense(self, h, w * 2, prefix="out_", axes=(layers.MLP, None),
                          scale=0.01, bias_init=_half_real).astype(jnp.float32)
    out = out.reshape(out.shape[:-2] + (k * w, 2))
    flat = np.flatnonzero(valid.reshape(-1))          # band slots that are real bins
    out = out[..., flat, :]                            # (..., T, F, 2)
    return jax.lax.complex(out[..., 0], out[..., 1])


def _half_real(key, shape, dtype):
  """(K, 2W) output bias laid out (K, W, [real, imag]): 1/2 + 0i in every bin."""
  del key
  bias = np.zeros((shape[0], shape[1] // 2, 2), np.float32)
  bias[..., 0] = 0.5
  return jnp.asarray(bias.reshape(shape), dtype)
