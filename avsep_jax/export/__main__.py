"""Serving artefacts from a training checkpoint.

  python -m avsep_jax.export --checkpoint WORKDIR --format {torch,onnx,stream} \
      [--quantize int8 [--calibration N [--data_dir DIR]]] [--step-ms 20] \
      --output PATH [--which best|latest] [--config FILE.py:variant]

torch: a safetensors file of the PyTorch mirror with the model config in its metadata
(`convert.load_safetensors` rebuilds the model). onnx: one self-contained .onnx file
(dynamic batch and length); --quantize int8 writes the INT8 model instead: MatMul
weights in INT8 with activations quantized at run time (dynamic), or with
--calibration N static QDQ INT8 whose activation ranges come from N validation
mixtures of the run's dataset (under --data_dir, default the run's). Weights and
activations are u8, which onnxruntime multiplies exactly on every x86-64 processor
(s8 weights saturate without VNNI; `onnx_export.INT8_WEIGHTS`). stream (a causal
model only): a directory PATH with the step graphs
`video_step.onnx`, `audio_step.onnx` and `stream.json`, run by
`avsep_jax.stream.onnx_engine.OnnxStreamer`; --step-ms sets the audio per step, and
--quantize int8 quantizes the MatMuls the same two ways (static: calibrated on the
streaming states of N validation mixtures). Problems (no checkpoint, params of
another config, an option this model cannot export) print one `error:` line and exit 1.
"""

import argparse
import os
import sys
import tempfile


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m avsep_jax.export",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True, help="training workdir")
  parser.add_argument("--format", required=True, choices=("torch", "onnx", "stream"))
  parser.add_argument("--quantize", choices=("int8",), default=None)
  parser.add_argument("--calibration", type=int, default=0,
                      help="with --quantize int8: static INT8 calibrated on this many "
                           "validation mixtures (0: dynamic INT8)")
  parser.add_argument("--data_dir", default=None,
                      help="TFDS directory of the calibration data (default: the run's)")
  parser.add_argument("--step-ms", type=float, default=20.0,
                      help="stream: audio per step (whole 10 ms hops, at most 40)")
  parser.add_argument("--output", required=True,
                      help="file to write (a directory for --format stream)")
  parser.add_argument("--which", choices=("best", "latest"), default="best")
  parser.add_argument("--config", default=None,
                      help="configs/<file>.py[:variant] instead of the run's config.json")
  args = parser.parse_args(argv)
  try:
    export(args)
  except (ValueError, NotImplementedError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def export(args):
  from avsep_jax import separate
  from avsep_jax.export import convert
  from avsep_jax.export import onnx_export
  if args.quantize and args.format not in ("onnx", "stream"):
    raise ValueError("--quantize int8 applies to --format stream or onnx only")
  if args.calibration < 0 or (args.calibration and not args.quantize):
    raise ValueError("--calibration N (N > 0) goes with --quantize int8")
  loaded = separate.load_model(args.checkpoint, args.which, args.config)
  model_config = loaded.config.model
  mode = ("static" if args.calibration else "dynamic") if args.quantize else None
  calibration = None
  if mode == "static":
    calibration = onnx_export.calibration_mixtures(loaded.config, args.calibration,
                                                   args.data_dir)
  if args.format == "stream":
    from avsep_jax.stream import step as step_lib
    step_lib.check_streamable(model_config)  # before any file is written
    onnx_export.export_stream(model_config, loaded.params, args.output,
                              step_ms=args.step_ms, quantize=mode, calibration=calibration)
    print(f"wrote {args.output}/ (stream, {args.step_ms:g} ms steps"
          f"{f', int8 {mode}' if mode else ''}; step {loaded.step}, {loaded.params_key})")
    return
  mirror = convert.build_mirror(model_config, loaded.params)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  if args.format == "torch":
    convert.save_safetensors(args.output, mirror, model_config)
  else:
    if args.quantize:
      with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "f32.onnx")
        onnx_export.export_onnx(mirror, model_config, f32)
        onnx_export.quantize_int8(f32, args.output, mode, calibration)
    else:
      onnx_export.export_onnx(mirror, model_config, args.output)
  print(f"wrote {args.output} ({args.format}{f', int8 {mode}' if mode else ''}; "
        f"step {loaded.step}, {loaded.params_key})")


if __name__ == "__main__":
  sys.exit(main())
