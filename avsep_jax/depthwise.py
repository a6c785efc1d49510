"""A depthwise 2-D convolution that XLA's CPU backend runs fast, shared by the model's
visual trunk and the RetinaFace detector (so it lives below both)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


class DepthwiseConv(nn.Module):
  """2-D depthwise convolution (one filter per channel, no bias) as shifted products.

  Same parameter as `nn.Conv(C, kernel, feature_group_count=C)` (kernel (kh, kw, 1, C)),
  but XLA's CPU backend runs grouped convolutions 15-40x slower than this elementwise
  form in the forward pass, which it fuses into one loop (and which is as fast on GPU);
  with the backward pass, 1.2x slower at stride 1 and 7x at stride 2
  (experiments/benchmarks/conv_forms.py).

  Attributes:
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: 'SAME' | 'VALID' | ((top, bottom), (left, right)); 'SAME' pads as
      `nn.Conv` does (the extra pixel at the bottom/right).
  """

  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Any = "SAME"
  kernel_init: Any = nn.initializers.lecun_normal()
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    """(N, H, W, C) -> (N, H', W', C)."""
    (kh, kw), (sh, sw), c = self.kernel_size, self.strides, x.shape[-1]
    kernel = self.param("kernel", self.kernel_init, (kh, kw, 1, c), self.param_dtype)
    kernel, x = kernel.astype(self.dtype), x.astype(self.dtype)
    padding = self.padding
    if isinstance(padding, str):
      padding = jax.lax.padtype_to_pads(x.shape[1:3], (kh, kw), (sh, sw), padding)
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    h, w = x.shape[1:3]
    if (h, w) == (kh, kw):  # a global filter: one output pixel
      return jnp.einsum("nhwc,hwc->nc", x, kernel[:, :, 0])[:, None, None]
    ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
    out = None
    for i in range(kh):
      for j in range(kw):
        tap = x[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw] * kernel[i, j, 0]
        out = tap if out is None else out + tap
    return out
