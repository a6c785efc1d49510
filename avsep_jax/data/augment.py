"""Training-time augmentation of mouth clips with dm-pix (jittable, any device).

One random draw per speaker clip, shared by all its frames: lighting and mirroring
change, lip motion does not.
"""

import dm_pix as pix
import jax
import jax.numpy as jnp


def _augment_clip(key, clip):
  """(F, H, W) float32 in [0, 1] -> same, one draw for the whole clip."""
  k_flip, k_bright, k_contrast, k_noise = jax.random.split(key, 4)
  x = clip[..., None]  # dm-pix wants a channel axis: (F, H, W, 1)
  x = pix.random_flip_left_right(k_flip, x)  # a mirrored mouth says the same thing
  x = pix.random_brightness(k_bright, x, max_delta=0.1)
  x = pix.random_contrast(k_contrast, x, lower=0.7, upper=1.3)
  x = x + 0.02 * jax.random.normal(k_noise, x.shape)
  return jnp.clip(x[..., 0], 0.0, 1.0)


@jax.jit
def augment_video(video, key):
  """Random flip, brightness, contrast and noise per speaker clip.

  Args:
    video: (B, S, F, H, W) uint8.
    key: a JAX PRNG key.

  Returns:
    (B, S, F, H, W) uint8.
  """
  b, s = video.shape[:2]
  clips = video.reshape((b * s,) + video.shape[2:]).astype(jnp.float32) / 255.0
  keys = jax.random.split(key, b * s)
  out = jax.vmap(_augment_clip)(keys, clips)
  return jnp.round(out * 255.0).astype(jnp.uint8).reshape(video.shape)
