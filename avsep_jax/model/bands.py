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


def _per_band_kernel(module, name, shape, axes, init, dtype):
  return module.param(name, nn.with_logical_partitioning(init, axes), shape, dtype)


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
    x = x.reshape(x.shape[:-2] + (w * c,)).astype(self.dtype)
    kernel = _per_band_kernel(self, "kernel", (k, w * c, self.d_model),
                              (None, None, layers.EMBED),
                              nn.initializers.variance_scaling(1.0, "fan_in", "normal",
                                                               in_axis=1, out_axis=2),
                              self.param_dtype)
    bias = _per_band_kernel(self, "bias", (k, self.d_model), (None, layers.EMBED),
                            nn.initializers.zeros_init(), self.param_dtype)
    return (jnp.einsum("...kc,kcd->...kd", x, kernel.astype(self.dtype))
            + bias.astype(self.dtype))


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
    d = x.shape[-1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = layers.layer_norm(name="ln", **kw)(x)
    w1 = _per_band_kernel(self, "hidden_kernel", (k, d, self.hidden),
                          (None, layers.EMBED, layers.MLP),
                          nn.initializers.variance_scaling(1.0, "fan_in", "normal",
                                                           in_axis=1, out_axis=2),
                          self.param_dtype)
    b1 = _per_band_kernel(self, "hidden_bias", (k, self.hidden), (None, layers.MLP),
                          nn.initializers.zeros_init(), self.param_dtype)
    w2 = _per_band_kernel(self, "out_kernel", (k, self.hidden, w * 2),
                          (None, layers.MLP, None),
                          nn.initializers.variance_scaling(0.01, "fan_in", "normal",
                                                           in_axis=1, out_axis=2),
                          self.param_dtype)

    b2 = self.param("out_bias", nn.with_logical_partitioning(_half_real, (None, None)),
                    (k, w * 2), self.param_dtype)
    h = jnp.tanh(jnp.einsum("...kd,kdh->...kh", x, w1.astype(self.dtype))
                 + b1.astype(self.dtype))
    out = (jnp.einsum("...kh,kho->...ko", h, w2.astype(self.dtype))
           + b2.astype(self.dtype)).astype(jnp.float32)
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
