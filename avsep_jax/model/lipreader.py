"""LipReader: the separator's visual encoder with a per-frame class head, for
lip-reading pretraining (`avsep_jax.lipread`).

    mouth ROIs (B, F, H, W) -> VisualEncoder -> Dense -> (B, F, classes) logits

The encoder is built exactly as `AVSeparator` builds it (same config, layer options and
module name), so its parameters move into a separator unchanged (`config.visual_init`).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from avsep_jax.model import avsep
from avsep_jax.model import layers
from avsep_jax.model import visual as visual_lib


class LipReader(nn.Module):
  """Attributes:
    config: a separator's `config.model`; only `visual` and the layer options are read.
    num_classes: classes per frame (visemes).
  """

  config: Any
  num_classes: int

  @nn.compact
  def __call__(self, video, train: bool = False):
    """(B, F, H, W) uint8 -> (B, F, num_classes) float32 logits."""
    if video.ndim != 4:
      raise ValueError(f"video must be (B, F, H, W) mouth clips, got shape {video.shape}")
    cfg = self.config
    opts = avsep.layer_options(cfg, train)
    tokens = visual_lib.VisualEncoder(cfg.visual, avsep.video_options(cfg, opts),
                                      name="visual_encoder")(video[:, None])[:, 0]
    logits = layers.dense(self.num_classes, (layers.EMBED, None), name="class_head",
                          **opts.kw)(tokens)
    return logits.astype(jnp.float32)
