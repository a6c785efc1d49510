"""DepthwiseConv and FramesAsChannelsConv3D against XLA's grouped and 3-D convolutions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avsep_jax import depthwise
from avsep_jax.model import visual


@pytest.mark.parametrize("size,kernel,strides,padding", [
    ((12, 12), (3, 3), (1, 1), "SAME"),
    ((12, 12), (3, 3), (2, 2), "SAME"),
    ((11, 9), (3, 3), (2, 2), "SAME"),      # odd sizes pad differently
    ((10, 10), (5, 3), (1, 2), "VALID"),
    ((11, 11), (11, 11), (1, 1), "VALID"),  # a global filter
    ((8, 8), (3, 3), (2, 2), ((0, 1), (0, 1))),
])
def test_depthwise_conv_matches_grouped_conv(size, kernel, strides, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, *size, 6)), jnp.float32)
  module = depthwise.DepthwiseConv(kernel, strides, padding)
  params = module.init(jax.random.key(0), x)
  w = params["params"]["kernel"]
  expected = jax.lax.conv_general_dilated(
      x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      feature_group_count=6, precision="highest")
  got = module.apply(params, x)
  assert got.shape == expected.shape
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frames,kernel", [(7, (5, 7, 7)), (4, (3, 5, 5)), (6, (2, 3, 3))])
def test_frames_as_channels_conv_matches_3d_conv(frames, kernel):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, frames, 14, 14, 1)), jnp.float32)
  module = visual.FramesAsChannelsConv3D(4, kernel, (1, 2, 2))
  params = module.init(jax.random.key(0), x)
  expected = jax.lax.conv_general_dilated(
      x, params["params"]["kernel"].value, (1, 2, 2), "SAME",
      dimension_numbers=("NDHWC", "DHWIO", "NDHWC"), precision="highest")
  got = module.apply(params, x)
  assert got.shape == expected.shape == (2, frames, 7, 7, 4)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_pointwise_conv_matches_1x1_conv():
  x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 5, 6, 8)), jnp.float32)
  module = visual.PointwiseConv(4)
  params = module.init(jax.random.key(0), x)
  expected = jax.lax.conv_general_dilated(
      x, params["params"]["kernel"].value, (1, 1), "VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest")
  np.testing.assert_allclose(module.apply(params, x), expected, rtol=1e-5, atol=1e-5)
