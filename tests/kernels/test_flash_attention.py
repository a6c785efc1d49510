"""The Pallas flash attention kernel (CPU interpret mode) against the plain-JAX reference.

Each case draws fresh random inputs and compares the output and the gradients of q, k
and v (through one shared random output cotangent) with `reference_attention`.
Relative error = max |kernel - reference| / max |reference|, per tensor.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from avsep_jax import kernels

# Small tiles, different in each kernel, so short sequences still span several blocks
# and the three kernels' loop bounds are exercised with different block geometries.
SMALL = kernels.BlockSizes(block_q=32, block_k=16, block_q_dq=16, block_k_dq=32,
                           block_q_dkv=32, block_k_dkv=16)
TOLERANCE = {jnp.float32: 1e-4, jnp.bfloat16: 2e-2}


def relative_error(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return np.abs(got - want).max() / max(np.abs(want).max(), 1e-30)


def random_inputs(seed, b, tq, tk, h, d, dtype):
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (b, tq, h, d), jnp.float32).astype(dtype)
  k = jax.random.normal(keys[1], (b, tk, h, d), jnp.float32).astype(dtype)
  v = jax.random.normal(keys[2], (b, tk, h, d), jnp.float32).astype(dtype)
  d_out = jax.random.normal(keys[3], (b, tq, h, d), jnp.float32).astype(dtype)
  return q, k, v, d_out


def output_and_grads(fn, q, k, v, d_out, **kwargs):
  out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, **kwargs), q, k, v)
  return (out, *vjp(d_out))


def assert_matches_reference(q, k, v, d_out, tolerance, **kwargs):
  got = output_and_grads(kernels.flash_attention, q, k, v, d_out, interpret=True,
                         **kwargs)
  # The reference sees the same (possibly bf16-rounded) inputs, computed in float32.
  up = [x.astype(jnp.float32) for x in (q, k, v, d_out)]
  want = output_and_grads(kernels.reference_attention, *up, **kwargs)
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
    assert g.dtype == q.dtype, name
    assert np.isfinite(np.asarray(g, np.float32)).all(), name
    err = relative_error(g, w)
    assert err < tolerance, f"{name}: relative error {err:.2e} >= {tolerance:.0e}"
  return got


# (B, Tq, Tk, H, D, masks); lengths are per example.
CASES = {
    "full": (2, 100, 100, 2, 32, {}),
    "causal_d64": (1, 77, 77, 2, 64, {"causal": True}),
    "window": (2, 100, 100, 1, 32, {"window": (10, 3)}),
    "window_future_only": (1, 90, 90, 2, 32, {"window": (0, 17)}),
    "lengths_causal": (2, 100, 100, 2, 32,
                       {"key_lengths": np.array([100, 37]), "causal": True}),
    "empty_example_window": (2, 64, 64, 2, 32,
                             {"key_lengths": np.array([0, 53]), "window": (5, 20)}),
    "tq_lt_tk_window": (2, 70, 130, 2, 32,
                        {"key_lengths": np.array([130, 61]), "window": (20, 40)}),
    "tq_gt_tk_causal": (1, 130, 50, 2, 32, {"causal": True}),
    "causal_window": (1, 120, 120, 2, 32, {"causal": True, "window": (24, 9)}),
    "d128_window": (1, 64, 64, 1, 128, {"window": (16, 16)}),
    "key_mask": (2, 60, 60, 2, 32, "key_mask"),
    "key_mask_causal_lengths": (2, 60, 60, 1, 64, "key_mask_causal"),
}


def case_kwargs(masks, b, tk, seed):
  if isinstance(masks, dict):
    return dict(masks)
  key_mask = np.array(jax.random.bernoulli(jax.random.key(seed + 100), 0.6, (b, tk)))
  key_mask[-1] = False  # one example sees nothing at all
  kwargs = {"key_mask": key_mask}
  if masks == "key_mask_causal":
    kwargs.update(causal=True, key_lengths=np.array([tk - 7, tk]))
  return kwargs


# Each case is 5-6 s of interpreted kernel on 2 cores: the fast tier keeps one of each
# kind (no mask, causal with a window, Tq > Tk, a window with an empty example, key
# masks, D = 128); the others differ in sizes or in one mask and run in the full suite.
SLOW_CASES = ("causal_d64", "window", "window_future_only", "lengths_causal",
              "tq_lt_tk_window", "key_mask")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n in SLOW_CASES else n for n in CASES])
def test_f32_output_and_grads_match_reference(name):
  b, tq, tk, h, d, masks = CASES[name]
  seed = sorted(CASES).index(name)
  q, k, v, d_out = random_inputs(seed, b, tq, tk, h, d, jnp.float32)
  assert_matches_reference(q, k, v, d_out, TOLERANCE[jnp.float32], block_sizes=SMALL,
                           **case_kwargs(masks, b, tk, seed))


@pytest.mark.parametrize("d,masks", [
    (64, {"causal": True, "key_lengths": np.array([96, 41])}),
    (128, {"window": (20, 5)}),
    (32, {"key_mask": np.arange(96)[None, :] % 3 != 1}),
])
def test_bf16_output_and_grads_match_reference(d, masks):
  q, k, v, d_out = random_inputs(d, 2, 96, 96, 2, d, jnp.bfloat16)
  if "key_mask" in masks:
    masks = {"key_mask": np.broadcast_to(masks["key_mask"], (2, 96))}
  assert_matches_reference(q, k, v, d_out, TOLERANCE[jnp.bfloat16], block_sizes=SMALL,
                           **masks)


def test_default_block_sizes_and_jit():
  q, k, v, d_out = random_inputs(20, 1, 200, 200, 2, 32, jnp.float32)
  lengths = jnp.array([150])

  @jax.jit
  def run(q, k, v, d_out, lengths):
    return output_and_grads(kernels.flash_attention, q, k, v, d_out, interpret=True,
                            key_lengths=lengths, window=(64, 64))

  got = run(q, k, v, d_out, lengths)
  want = output_and_grads(kernels.reference_attention, q, k, v, d_out,
                          key_lengths=lengths, window=(64, 64))
  for g, w in zip(got, want):
    assert relative_error(g, w) < 1e-4


def test_tpu_variant_interpreted():
  # The TPU path's own plumbing: (B, H, T, D) layout, lengths in SMEM, 128-blocks.
  q, k, v, d_out = random_inputs(21, 2, 150, 150, 1, 32, jnp.float32)
  assert_matches_reference(q, k, v, d_out, 1e-4, platform="tpu",
                           key_lengths=np.array([150, 70]), window=(130, 0))


def test_rows_with_no_visible_key_are_zero_with_zero_grads():
  b, t, h, d = 3, 48, 2, 32
  q, k, v, d_out = random_inputs(30, b, t, t, h, d, jnp.float32)
  key_mask = np.ones((b, t), bool)
  key_mask[2] = False
  kwargs = {"key_lengths": np.array([0, 20, t]), "causal": True, "window": (4, 0),
            "key_mask": key_mask, "block_sizes": SMALL}
  out, dq, dk, dv = (np.asarray(x) for x in output_and_grads(
      kernels.flash_attention, q, k, v, d_out, interpret=True, **kwargs))
  for x in (out, dq, dk, dv):
    assert np.isfinite(x).all()
  # Example 0 sees no key, example 2 masks every key: zeros everywhere.
  for x in (out, dq, dk, dv):
    np.testing.assert_array_equal(x[[0, 2]], 0.0)
  # Example 1: keys >= 20 are padding, so queries >= 24 (window 4, causal) see none.
  np.testing.assert_array_equal(out[1, 24:], 0.0)
  np.testing.assert_array_equal(dq[1, 24:], 0.0)
  np.testing.assert_array_equal(dk[1, 20:], 0.0)
  np.testing.assert_array_equal(dv[1, 20:], 0.0)
  assert np.abs(out[1, :24]).min() > 0


@pytest.mark.parametrize("window,block", [((16, 16), 32), ((100, 0), 16), ((0, 40), 32)])
def test_window_visits_the_blocks_it_implies(window, block):
  t = 512
  sizes = kernels.BlockSizes(*(block,) * 6)
  got = kernels.visited_key_blocks(t, t, window=window, block_sizes=sizes)[0]
  # Keys [qs - left, qe + right] for queries [qs, qe]: the window's width, not T.
  left, right = window
  want = [min(t - 1, (i + 1) * block - 1 + right) // block
          - max(0, i * block - left) // block + 1 for i in range(t // block)]
  np.testing.assert_array_equal(got, want)
  # A span of left + block + right keys touches at most this many blocks.
  bound = (left + right + 2 * block - 1) // block + 1
  assert max(got) <= bound < t // block
  dkv = kernels.visited_query_blocks(t, t, window=window, block_sizes=sizes)[0]
  assert max(dkv) <= bound


def test_causal_and_lengths_visit_only_their_blocks():
  sizes = kernels.BlockSizes(*(16,) * 6)
  causal = kernels.visited_key_blocks(64, 64, causal=True, block_sizes=sizes)
  np.testing.assert_array_equal(causal, [[1, 2, 3, 4]])
  padded = kernels.visited_key_blocks(64, 64, key_lengths=np.array([64, 20, 0]),
                                      block_sizes=sizes)
  np.testing.assert_array_equal(padded, [[4] * 4, [2] * 4, [0] * 4])
  dkv = kernels.visited_query_blocks(64, 64, key_lengths=np.array([64, 20]),
                                     causal=True, block_sizes=sizes)
  np.testing.assert_array_equal(dkv, [[4, 3, 2, 1], [4, 3, 0, 0]])


def test_kernel_never_reads_keys_outside_the_visited_blocks():
  # NaN keys/values in every block a query block does not visit: if the kernel read
  # one, 0 * NaN would reach that block's rows. dq's kernel shares the bounds.
  t, block, window = 160, 16, (20, 5)
  sizes = kernels.BlockSizes(*(block,) * 6)
  q, k, v, d_out = random_inputs(40, 1, t, t, 1, 32, jnp.float32)
  visited = kernels.visited_key_blocks(t, t, window=window, block_sizes=sizes)[0]
  assert visited.max() == 4  # of 10
  for q_block in (0, 5):
    rows = slice(q_block * block, (q_block + 1) * block)
    allowed = np.zeros(t, bool)
    first = max(0, q_block * block - window[0]) // block
    allowed[first * block:(first + visited[q_block]) * block] = True
    poison = jnp.asarray(~allowed)[None, :, None, None]
    k_bad, v_bad = jnp.where(poison, jnp.nan, k), jnp.where(poison, jnp.nan, v)

    def rows_loss(q, k, v, attention, rows=rows):
      out = attention(q, k, v, window=window, block_sizes=sizes, interpret=True)
      return jnp.sum(out[:, rows] * d_out[:, rows])

    got, dq = jax.value_and_grad(rows_loss)(q, k_bad, v_bad, kernels.flash_attention)
    want, want_dq = jax.value_and_grad(rows_loss)(q, k, v, kernels.reference_attention)
    assert np.isfinite(float(got)) and abs(float(got) - float(want)) < 1e-4 * abs(
        float(want)) + 1e-4
    assert relative_error(dq[:, rows], want_dq[:, rows]) < 1e-4


@pytest.mark.parametrize("change,match", [
    ({"d": 48}, "head dim D=48"),
    ({"k_shape": (2, 40, 3, 32)}, "agree on batch, heads and head dim"),
    ({"v_shape": (2, 41, 2, 32)}, "k and v shapes differ"),
    ({"q_shape": (2, 40, 32)}, r"q must be \(B, T, H, D\)"),
    ({"window": (40, 0)}, "larger than the sequence"),
    ({"window": (-1, 3)}, "window"),
    ({"block_sizes": kernels.BlockSizes(block_q=48)}, "block_q=48 cannot be lowered"),
    ({"block_sizes": kernels.BlockSizes(block_k_dkv=8)},
     "block_k_dkv=8 cannot be lowered"),
    ({"dtype": jnp.int32}, "dtype int32 not supported"),
    ({"key_lengths": np.array([3])}, r"key_lengths must be \(2,\) int"),
    ({"key_mask": np.ones((2, 39), bool)}, r"key_mask must be \(2, 40\)"),
])
def test_bad_input_raises_a_clear_error(change, match):
  d = change.pop("d", 32)
  dtype = change.pop("dtype", jnp.float32)
  q = jnp.zeros(change.pop("q_shape", (2, 40, 2, d)), dtype)
  k = jnp.zeros(change.pop("k_shape", (2, 40, 2, d)), dtype)
  v = jnp.zeros(change.pop("v_shape", k.shape), dtype)
  with pytest.raises(ValueError, match=match):
    kernels.flash_attention(q, k, v, interpret=True, **change)


def test_no_cpu_lowering_without_interpret():
  x = jnp.zeros((1, 16, 1, 32))
  with pytest.raises(ValueError, match="pass interpret=True"):
    kernels.flash_attention(x, x, x, platform="cpu")


@pytest.mark.parametrize("platform,lowering,call", [
    ("gpu", "cuda", "__gpu$xla.gpu.triton"), ("tpu", "tpu", "tpu_custom_call")])
def test_lowers_forward_and_backward_for_accelerators(platform, lowering, call):
  # Lowering runs the Pallas Triton / Mosaic lowerings on this CPU host (the device
  # compilers run later, on the device): it catches unsupported shapes and ops.
  x = jax.ShapeDtypeStruct((2, 1000, 4, 64), jnp.bfloat16)
  lengths = jax.ShapeDtypeStruct((2,), jnp.int32)

  def loss(q, k, v, lengths):
    key_mask = jnp.broadcast_to(jnp.arange(1000) % 7 != 0, (2, 1000))
    out = kernels.flash_attention(q, k, v, key_lengths=lengths, key_mask=key_mask,
                                  causal=True, window=(256, 0), platform=platform)
    return out.astype(jnp.float32).sum()

  text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(x, x, x, lengths).lower(
      lowering_platforms=(lowering,)).as_text()
  assert text.count(f"custom_call @{call}") == 3  # forward, dq, dk/dv
