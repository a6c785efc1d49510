r"""XLA's convolution forms the model replaced, against the forms it uses now, on this CPU.

  python experiments/benchmarks/conv_forms.py [--clips=2] [--detector_frames=2] \
      [--repeats=5] [--stem_input_grad] [--json=/tmp/conv_forms.json]

XLA's CPU backend runs some convolutions several times slower than the same maths
written another way, so the model computes them another way (BENCHMARKS.md, "Training
throughput"). This script times both forms at the shapes the project runs, jitted,
forward only and forward + backward (`jax.value_and_grad` of the sum of the outputs
with respect to the input and the kernel; the stem's kernel only, see below), each the
median of --repeats timings after a warm-up call (compilation). The project's form is
the project's own module, applied to the same kernel; each case first checks that both
forms give the same outputs and gradients, so the timings compare the same maths.

  stem   lite's `stem3d`: SAME 5x7x7 conv, strides (1, 2, 2), 1 -> 16 channels, on
         --clips x 2 speakers x 50 frames (2 s at 25 fps) of 88x88 mouth ROIs.
         `lax.conv_general_dilated` in 3-D against `visual.FramesAsChannelsConv3D`
         (a 2-D conv over the 5 stacked frames).
  dw     depthwise 3x3: `lax.conv_general_dilated` with feature_group_count = C (what
         `nn.Conv(C, (3, 3), feature_group_count=C)` runs) against
         `depthwise.DepthwiseConv` (nine shifted products); lite's trunk `dwconv1`
         (stride 1) and `stage0_0` depthwise (stride 2) on the --clips x 2 x 50 frames,
         and RetinaFace's `expanded_conv_depthwise` (stride 1) and `block_1_depthwise`
         (the first stride 2) on --detector_frames frames of 384x640 (the detector's
         input for a 360x640 video at face_pipeline.py's --max_size=640). The
         detector only runs inference: its fwd column is the one that matters.
  1x1    lite's trunk `stage0_0` expand (its largest 1x1 conv): `lax.conv_general_dilated`
         against `visual.PointwiseConv` (an einsum).

The defaults (--clips=2: half the training recipe's batch of 4 x 2 speakers x 2 s) run
in about a minute on 2 cores (52 s with a training run sharing them); --clips=4 is the
recipe's batch. GFLOP/s counts the conv arithmetic, 2 x output elements x kernel taps x
input channels per group for the forward pass, 3x that for forward + backward; the
speed-up is the replaced form's time over the project's.

The stem's backward pass differentiates the kernel only, as training does (its input is
the video): XLA's input gradient of the one-channel strided 3-D conv is so slow on CPU
(75 s a call at --clips=2 on a 2-core CPU shared with a training run, against 0.55 s
for the stacked form) that it would swamp the run; --stem_input_grad times it too.
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from avsep_jax import depthwise
from avsep_jax.model import variants
from avsep_jax.model import visual
from avsep_jax.vision import retinaface

_CLIPS = flags.DEFINE_integer("clips", 2, "Clips of 2 speakers x 2 s for lite's layers.")
_DETECTOR_FRAMES = flags.DEFINE_integer("detector_frames", 2,
                                        "Frames of 384x640 for RetinaFace's layers.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timings per measurement (median).")
_STEM_INPUT_GRAD = flags.DEFINE_bool(
    "stem_input_grad", False,
    "Also differentiate the stem w.r.t. its input (training does not; the 3-D form's "
    "input gradient takes over a minute a call at --clips=2).")
_JSON = flags.DEFINE_string("json", None, "Optional path to write every row as JSON.")

_SPEAKERS = 2
_SECONDS = 2.0
# RetinaFace's input for a 360x640 video at max_size=640 (padded to a multiple of 32).
_DETECTOR_SIZE = (384, 640)


def median_time(fn, repeats):
  """Seconds: median of `repeats` calls of `fn` after one warm-up call (compilation)."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def sum_grad(fn, argnums):
  """Jitted (sum of fn(x, k), its gradients w.r.t. `argnums`): forward + backward."""
  return jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(fn(x, k)), argnums=argnums))


def assert_same(a, b, what):
  """Equal up to float32 rounding, relative to the larger array's scale."""
  a, b = np.asarray(a), np.asarray(b)
  scale = float(np.max(np.abs(a))) or 1.0
  np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * scale, err_msg=what)


def compare(case, shape, x, kernel, forms, fwd_flops, repeats, argnums=(0, 1)):
  """Checks then times two forms of one convolution.

  Args:
    case: row label.
    shape: human-readable shape string.
    x: input array.
    kernel: kernel array, in the layout both forms take.
    forms: ((name, fn(x, kernel)), (name, fn(x, kernel))): replaced form, then the
      project's.
    fwd_flops: forward FLOPs of the conv.
    repeats: timings per measurement.
    argnums: what the backward pass differentiates: 0 the input, 1 the kernel.

  Returns:
    One dict per form.
  """
  fwds = [jax.jit(fn) for _, fn in forms]
  grads = [sum_grad(fn, argnums) for _, fn in forms]
  ref_out, out = (f(x, kernel) for f in fwds)
  assert_same(ref_out, out, f"{case}: outputs")
  (_, ref_g), (_, g) = (f(x, kernel) for f in grads)
  for arg, a, b in zip(argnums, ref_g, g):
    assert_same(a, b, f"{case}: {('input', 'kernel')[arg]} gradients")
  del ref_out, out, ref_g, g
  rows = []
  for (name, _), fwd, grad in zip(forms, fwds, grads):
    t_fwd = median_time(lambda: fwd(x, kernel), repeats)
    t_both = median_time(lambda: grad(x, kernel), repeats)
    rows.append(dict(case=case, shape=shape, form=name, fwd_ms=1e3 * t_fwd,
                     fwd_bwd_ms=1e3 * t_both, fwd_gflops=fwd_flops / t_fwd / 1e9,
                     fwd_bwd_gflops=3 * fwd_flops / t_both / 1e9))
  for row in rows:
    row["speedup_fwd"] = rows[0]["fwd_ms"] / row["fwd_ms"]
    row["speedup_fwd_bwd"] = rows[0]["fwd_bwd_ms"] / row["fwd_bwd_ms"]
  return rows


def grouped_conv(strides, padding):
  """The replaced depthwise form: x (N, H, W, C), kernel (3, 3, 1, C) -> (N, H', W', C)."""
  def fn(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=x.shape[-1])
  return fn


def with_kernel(module):
  """The project's form: fn(x, kernel) applying `module` with `kernel` as its one
  parameter."""
  return lambda x, kernel: module.apply({"params": {"kernel": kernel}}, x)


def stem_case(cfg, n, frames, size, rng, repeats, input_grad):
  """Lite's stem3d: (n, frames, size, size, 1) -> (n, frames, size/2, size/2, C)."""
  kernel_shape, c = tuple(cfg.stem_kernel), cfg.stem_channels
  strides = (1, 2, 2)
  x = jnp.asarray(rng.standard_normal((n, frames, size, size, 1)), jnp.float32)
  kernel = jnp.asarray(0.05 * rng.standard_normal(kernel_shape + (1, c)), jnp.float32)

  def conv3d(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, strides, "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))

  out_elems = n * frames * (size // 2) ** 2 * c
  flops = 2 * out_elems * int(np.prod(kernel_shape))
  kt, kh, kw = kernel_shape
  shape = f"({n}, {frames}, {size}, {size}, 1), {kt}x{kh}x{kw}, 1->{c}, /(1, 2, 2)"
  if not input_grad:
    shape += ", bwd: kernel only"
  return compare("lite stem3d", shape, x, kernel, (
      ("3-D conv_general_dilated", conv3d),
      ("2-D over stacked frames",
       with_kernel(visual.FramesAsChannelsConv3D(c, kernel_shape, strides))),
  ), flops, repeats, argnums=(0, 1) if input_grad else (1,))


def depthwise_case(case, n, hw, c, stride, padding, rng, repeats):
  """Depthwise 3x3 on (n, h, w, c) with `stride` and `padding`."""
  x = jnp.asarray(rng.standard_normal((n,) + hw + (c,)), jnp.float32)
  kernel = jnp.asarray(0.3 * rng.standard_normal((3, 3, 1, c)), jnp.float32)
  strides = (stride, stride)
  shifted_products = with_kernel(depthwise.DepthwiseConv((3, 3), strides, padding))
  out = jax.eval_shape(shifted_products, x, kernel)
  flops = 2 * int(np.prod(out.shape)) * 9
  shape = f"({n}, {hw[0]}, {hw[1]}, {c}), 3x3 dw, /{stride}"
  return compare(case, shape, x, kernel, (
      ("grouped conv_general_dilated", grouped_conv(strides, padding)),
      ("shifted products", shifted_products),
  ), flops, repeats)


def pointwise_case(case, n, hw, c_in, c_out, rng, repeats):
  """1x1 conv on (n, h, w, c_in) -> (n, h, w, c_out)."""
  x = jnp.asarray(rng.standard_normal((n,) + hw + (c_in,)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((1, 1, c_in, c_out)) / np.sqrt(c_in),
                       jnp.float32)

  def conv1x1(x, kernel):
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

  flops = 2 * n * hw[0] * hw[1] * c_out * c_in
  shape = f"({n}, {hw[0]}, {hw[1]}, {c_in}), 1x1, {c_in}->{c_out}"
  return compare(case, shape, x, kernel, (
      ("conv_general_dilated", conv1x1),
      ("einsum", with_kernel(visual.PointwiseConv(c_out))),
  ), flops, repeats)


def main(argv):
  del argv
  repeats = _REPEATS.value
  rng = np.random.default_rng(0)
  model = variants.model_config("lite", num_speakers=_SPEAKERS)
  cfg = model.visual
  frames = int(round(_SECONDS * model.video_fps))
  n_clips = _CLIPS.value * _SPEAKERS          # speaker slots folded into the batch
  n_frames = n_clips * frames                 # the trunk runs on every frame
  # Spatial sizes inside lite's visual encoder: stem3d and the trunk's conv1 halve.
  trunk = model.roi_size // 2 // 2
  c0 = cfg.trunk_stem_channels
  expansion, _, _, stage0_stride = cfg.trunk_blocks[0]
  hidden = c0 * expansion                     # stage0_0 expands dwconv1's c0 channels
  # RetinaFace: Conv1 (stride 2, 32 channels), expanded_conv_depthwise on it, then
  # block_1 expands expanded_conv_project's 16 channels by 6 for its stride-2 depthwise.
  det_hw = (_DETECTOR_SIZE[0] // 2, _DETECTOR_SIZE[1] // 2)
  det_frames = _DETECTOR_FRAMES.value

  rows = []
  rows += stem_case(cfg, n_clips, frames, model.roi_size, rng, repeats,
                    _STEM_INPUT_GRAD.value)
  rows += depthwise_case("lite trunk dwconv1", n_frames, (trunk, trunk), c0, 1, "SAME",
                         rng, repeats)
  rows += depthwise_case("lite trunk stage0_0 depthwise", n_frames, (trunk, trunk), hidden,
                         stage0_stride, "SAME", rng, repeats)
  rows += depthwise_case("RetinaFace expanded_conv_depthwise", det_frames, det_hw, 32, 1,
                         retinaface._PAD_SAME3, rng, repeats)
  rows += depthwise_case("RetinaFace block_1_depthwise", det_frames, det_hw, 6 * 16,
                         retinaface._BLOCKS[0][1], retinaface._PAD_S2, rng, repeats)
  rows += pointwise_case("lite trunk stage0_0 expand", n_frames, (trunk, trunk), c0, hidden,
                         rng, repeats)

  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{jax.device_count()} device(s); lite: {_CLIPS.value} clips x {_SPEAKERS} "
        f"speakers x {frames} frames; detector: {det_frames} frames "
        f"{_DETECTOR_SIZE[0]}x{_DETECTOR_SIZE[1]}; median of {repeats} after a warm-up.")
  print()
  print("| case | shape | form | fwd ms | fwd+bwd ms | GFLOP/s fwd | GFLOP/s fwd+bwd "
        "| speed-up fwd | speed-up fwd+bwd |")
  print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  for i, r in enumerate(rows):
    project = i % 2 == 1                      # rows come as (replaced, project's) pairs
    speedup = (f"{r['speedup_fwd']:.2f}x | {r['speedup_fwd_bwd']:.2f}x" if project
               else " | ")
    print(f"| {r['case']} | {r['shape']} | {r['form']} | {r['fwd_ms']:.1f} "
          f"| {r['fwd_bwd_ms']:.1f} | {r['fwd_gflops']:.2f} | {r['fwd_bwd_gflops']:.2f} "
          f"| {speedup} |")
  if _JSON.value:
    with open(_JSON.value, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  app.run(main)
