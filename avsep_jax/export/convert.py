"""Flax params of `AVSeparator` <-> state_dict of `torch_model.AVSeparatorTorch`.

The torch modules carry the Flax module names, so a Flax leaf
`params['audio_encoder']['cnn']['conv_0']['kernel']` becomes the torch tensor
`audio_encoder.cnn.conv_0.weight`, transposed to torch's layout by the kind of torch
module it lands in. Every Flax leaf must be used and every torch parameter filled;
anything else means the params come from another config, and the error names the
first few paths that disagree.

A safetensors file holds the torch state_dict plus the model config (JSON, in the
file's metadata), so a serving process rebuilds the mirror from the file alone.
"""

import json

import ml_collections
import numpy as np
import torch
from torch import nn

from avsep_jax.export import torch_blocks as tb
from avsep_jax.export import torch_model as tm

FORMAT_TAG = "avsep_jax.export.torch_model/1"


class ParamsMismatchError(ValueError):
  """The params do not belong to a model of this config."""


def _unbox(tree):
  """Flax params (possibly LogicallyPartitioned boxes, FrozenDict) -> nested dicts of
  numpy arrays."""
  import flax.core
  import flax.linen as fnn
  tree = fnn.meta.unbox(flax.core.unfreeze(tree))
  if "params" in tree and isinstance(tree["params"], dict) and len(tree) == 1:
    tree = tree["params"]
  def walk(node):
    if isinstance(node, dict):
      return {k: walk(v) for k, v in node.items()}
    return np.asarray(node, np.float32)
  return walk(tree)


def _flatten(tree, prefix=()):
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _rules(mod):
  """[(torch_name, flax_name, to_torch(np), to_flax(np, flax_shape))] for one module."""
  ident = lambda x, shape=None: x
  if isinstance(mod, nn.Linear):
    rules = [("weight", "kernel", lambda k: k.reshape(-1, k.shape[-1]).T,
              lambda w, shape: w.T.reshape(shape))]
    if mod.bias is not None:
      rules.append(("bias", "bias", ident, ident))
    return rules
  if isinstance(mod, nn.LayerNorm):
    return [("weight", "scale", ident, ident), ("bias", "bias", ident, ident)]
  if isinstance(mod, tb.Conv2dSame):
    # (kh, kw, in, out) <-> (out, in, kh, kw)
    rules = [("weight", "kernel", lambda k: k.transpose(3, 2, 0, 1),
              lambda w, shape: w.transpose(2, 3, 1, 0))]
    if mod.bias is not None:
      rules.append(("bias", "bias", ident, ident))
    return rules
  if isinstance(mod, tb.DepthwiseConv):
    # (kh, kw, 1, C) <-> (C, 1, kh, kw)
    return [("weight", "kernel", lambda k: k.transpose(3, 2, 0, 1),
             lambda w, shape: w.transpose(2, 3, 1, 0))]
  if isinstance(mod, tb.FramesConv3D):
    # (kt, kh, kw, 1, F) <-> (F, 1, kt, kh, kw)
    return [("weight", "kernel", lambda k: k.transpose(4, 3, 0, 1, 2),
             lambda w, shape: w.transpose(2, 3, 4, 1, 0))]
  if isinstance(mod, tb.PReLU):
    return [("negative_slope", "negative_slope", lambda s: s.reshape(()),
             lambda s, shape: s.reshape(shape))]
  return []


def _direct_params(mod):
  """Parameters registered on modules with no rule (embeddings): same name, same shape."""
  return [name for name, _ in mod.named_parameters(recurse=False)]


def _mapping(model):
  """[(torch key, flax path, to_torch, to_flax)] over the whole mirror."""
  ident = lambda x, shape=None: x
  entries = []
  for mod_name, mod in model.named_modules():
    prefix = tuple(mod_name.split(".")) if mod_name else ()
    rules = _rules(mod)
    if rules:
      for t_name, f_name, to_t, to_f in rules:
        entries.append((".".join(prefix + (t_name,)), prefix + (f_name,), to_t, to_f))
    else:
      for t_name in _direct_params(mod):
        entries.append((".".join(prefix + (t_name,)), prefix + (t_name,), ident, ident))
  return entries


def _mismatch(kind, items):
  items = sorted("/".join(p) if isinstance(p, tuple) else p for p in items)
  shown = ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
  return f"{kind}: {shown}"


def flax_to_state_dict(params, model):
  """Flax `params` of AVSeparator(config) -> a state_dict for `model` (its mirror).

  Raises:
    ParamsMismatchError: a leaf missing, left over, or of the wrong shape; the message
      names them (params of another config or variant).
  """
  flat = _flatten(_unbox(params))
  entries = _mapping(model)
  own = dict(model.named_parameters())
  used, problems, state = set(), [], {}
  for t_key, f_path, to_t, _ in entries:
    if f_path not in flat:
      problems.append(_mismatch("missing in the params", [f_path]))
      continue
    used.add(f_path)
    value = np.array(to_t(flat[f_path]), np.float32, order="C")
    want = tuple(own[t_key].shape)
    if value.shape != want:
      problems.append(f"{'/'.join(f_path)} has shape {flat[f_path].shape}, which "
                      f"gives {value.shape} here; this model needs {want}")
      continue
    state[t_key] = torch.from_numpy(value.astype(np.float32))
  extra = set(flat) - used
  if extra:
    problems.append(_mismatch("not in this model", extra))
  if problems:
    raise ParamsMismatchError(
        "params do not fit this model config (another variant, speaker count or "
        "alignment?): " + "; ".join(problems[:6]))
  return state


def state_dict_to_flax(state, model):
  """Inverse of `flax_to_state_dict`: nested dict of numpy arrays (the Flax tree)."""
  tree = {}
  shapes = _flax_shapes(model)
  for t_key, f_path, _, to_f in _mapping(model):
    value = state[t_key].detach().cpu().numpy()
    node = tree
    for k in f_path[:-1]:
      node = node.setdefault(k, {})
    node[f_path[-1]] = np.array(to_f(value, shapes[f_path]), order="C")
  return tree


def _flax_shapes(model):
  """Flax leaf shapes implied by the mirror's parameters."""
  shapes = {}
  for t_key, f_path, to_t, to_f in _mapping(model):
    mod_name, _, _ = t_key.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    p = dict(model.named_parameters())[t_key]
    if isinstance(mod, nn.Linear) and f_path[-1] == "kernel":
      # A pointwise conv keeps nn.Conv's (1, 1, in, out) kernel.
      parent = model.get_submodule(mod_name.rpartition(".")[0]) if "." in mod_name else None
      if isinstance(parent, tb.ConvNormAct):
        shapes[f_path] = (1, 1, p.shape[1], p.shape[0])
      else:
        shapes[f_path] = (p.shape[1], p.shape[0])
    elif isinstance(mod, tb.PReLU):
      shapes[f_path] = ()
    else:
      shapes[f_path] = None
  return shapes


def build_mirror(model_config, params=None):
  """AVSeparatorTorch(model_config) in eval mode, with `params` (Flax) loaded if given."""
  model = tm.AVSeparatorTorch(model_config).eval()
  if params is not None:
    model.load_state_dict(flax_to_state_dict(params, model), strict=True)
  return model


def save_safetensors(path, model, model_config):
  """Writes the mirror's weights and its model config to one safetensors file."""
  from safetensors.torch import save_file
  config_json = model_config.to_json() if hasattr(model_config, "to_json") else \
      json.dumps(model_config)
  state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
  save_file(state, str(path), metadata={"format": FORMAT_TAG, "model_config": config_json})


def load_safetensors(path, expected_config=None):
  """Rebuilds the mirror from a file of `save_safetensors`.

  Args:
    path: the safetensors file.
    expected_config: optional `config.model`; a file of another config raises
      ParamsMismatchError naming the keys that differ.

  Returns:
    (model in eval mode, its model config).
  """
  from safetensors import safe_open
  from safetensors.torch import load_file
  with safe_open(str(path), framework="pt") as f:
    meta = f.metadata() or {}
  if meta.get("format") != FORMAT_TAG:
    raise ValueError(f"{path} is not a model file of avsep_jax.export (format "
                     f"{meta.get('format')!r}, want {FORMAT_TAG!r})")
  config = ml_collections.ConfigDict(json.loads(meta["model_config"]))
  if expected_config is not None:
    diff = config_differences(expected_config, config)
    if diff:
      raise ParamsMismatchError(f"{path} holds a model of another config: {diff}")
  model = build_mirror(config)
  model.load_state_dict(load_file(str(path)), strict=True)
  return model, config


def config_differences(a, b):
  """'key: x here, y there; ...' for the leaves where two model configs differ."""
  fa = _flatten_config(json.loads(a.to_json()) if hasattr(a, "to_json") else a)
  fb = _flatten_config(json.loads(b.to_json()) if hasattr(b, "to_json") else b)
  keys = sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))
  return "; ".join(f"{k}: {fa.get(k)!r} here, {fb.get(k)!r} there" for k in keys[:6])


def _flatten_config(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten_config(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = json.loads(json.dumps(v))  # tuples -> lists
  return out
