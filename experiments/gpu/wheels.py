r"""Downloads the wheels the GPU sprint needs and that the GPU image lacks.

  python experiments/gpu/wheels.py [--dir=.gpu_wheels]      # or: make gpu-wheels

The lent GPU machine (Python 3.12, jax 0.11 with CUDA, flax, optax, orbax, torch, ...)
has no network: what training, SynthAV generation and evaluation import beyond its image
travels with the working tree as wheels, and the sprint installs them offline with
`pip install --no-index --no-deps --target`. Everything the image already has is left
out, and so is what the training path never imports (PyAV, pesq, pystoi, torch).

Prints each wheel, their total and the total with the tracked tree, which must stay
under the 64 MiB that may travel (exit status 1 if it does not).
"""

import argparse
import os
import subprocess
import sys

# name==version, as setup.py pins them (or as the CPU venv resolves them), with the
# dependencies the GPU image does not have. The image's own numpy, protobuf, etils,
# absl-py, pyarrow, psutil, requests, wrapt, chex, ... are used as they are.
WHEELS = (
    "grain==0.2.18",
    "array_record==0.8.6",
    "tensorflow-datasets==4.9.10",
    "ml_collections==1.1.0",
    "dm-pix==0.4.5",
    "espeakng-loader==0.2.4",
    "soxr==1.1.0",
    "tensorboardX==2.6.5",
    "importlib_resources==7.1.0",
    "dm-tree==0.1.10",
    "immutabledict==4.3.1",
    "simple-parsing==0.1.9",
    "docstring-parser==0.18.0",
    "tensorflow-metadata==1.21.0",
    "googleapis-common-protos==1.76.0",
    "termcolor==3.3.0",
    "toml==0.10.2",
    "portpicker==1.6.0",
    # tensorboardX writes the trainer's audio summaries through soundfile.
    "soundfile==0.14.0",
    "cffi==2.1.1",
    "pycparser==3.12",
)
# Published as source only, pure Python: built into a wheel here.
SOURCE_ONLY = ("promise==2.3",)

PYTHON_VERSION = "3.12"
# pip matches manylinux tags exactly: list the ones these packages publish.
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_24_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_34_x86_64", "manylinux_2_35_x86_64", "manylinux1_x86_64")
TRAVEL_LIMIT = 64 * 2**20
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pip(*args):
  subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def tracked_bytes(root=ROOT):
  """Bytes of the files git tracks under `root` (what always travels)."""
  names = subprocess.run(["git", "-C", root, "ls-files", "-z"], check=True,
                         capture_output=True).stdout.split(b"\0")
  return sum(os.path.getsize(os.path.join(root, n.decode()))
             for n in names if n and os.path.isfile(os.path.join(root, n.decode())))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--dir", default=os.path.join(ROOT, ".gpu_wheels"),
                      help="where the wheels go (git ignores .gpu_wheels)")
  args = parser.parse_args(argv)
  os.makedirs(args.dir, exist_ok=True)
  platforms = [a for p in PLATFORMS for a in ("--platform", p)]
  for wheel in WHEELS:
    pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--python-version",
        PYTHON_VERSION, "--implementation", "cp", *platforms, "-d", args.dir, wheel)
  for package in SOURCE_ONLY:
    pip("wheel", "--quiet", "--no-deps", "-w", args.dir, package)
  files = sorted(f for f in os.listdir(args.dir) if f.endswith(".whl"))
  total = 0
  for f in files:
    size = os.path.getsize(os.path.join(args.dir, f))
    total += size
    print(f"{size / 2**20:7.2f} MiB  {f}")
  tracked = tracked_bytes()
  print(f"wheels: {len(files)} files, {total / 2**20:.1f} MiB in {args.dir}")
  print(f"tracked tree: {tracked / 2**20:.1f} MiB; together {(total + tracked) / 2**20:.1f}"
        f" MiB of the {TRAVEL_LIMIT / 2**20:.0f} MiB that may travel")
  if total + tracked > TRAVEL_LIMIT:
    print("too large to travel: shrink the tracked tree or the wheel list",
          file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
