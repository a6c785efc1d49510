r"""Knowledge distillation from a trained teacher workdir into a smaller student.

  python -m avsep_jax.main --config=configs/distill.py:lite --workdir=DIR \
      --config.teacher_workdir=TEACHER   # lite teacher (6 slots) -> half-width student
  python -m avsep_jax.main --config=configs/distill.py:stream ...  # -> causal student
  python -m avsep_jax.main --config=configs/distill.py:smoke ...   # tests (2 slots)

Every key but `trainer`, `teacher_*` and `distill` is the student's training config:
`configs/6spk.py` of the same variant (smoke: `configs/2spk.py:smoke`), with
`config.model` the student's model. The teacher's model config is read from
TEACHER/config.json, which the trainer writes; its slots, sample rate, frame rate and
ROI size must be the student's.
"""

import importlib.util
import pathlib

import ml_collections

VARIANTS = ("lite", "stream", "smoke")


def _load(name):
  spec = importlib.util.spec_from_file_location(
      f"distill_base_{name}", pathlib.Path(__file__).with_name(f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str = "lite") -> ml_collections.ConfigDict:
  variant = arg or "lite"
  if variant not in VARIANTS:
    raise ValueError(f"unknown distill variant {variant!r}; choose from {VARIANTS}")
  if variant == "smoke":
    config = _load("2spk").get_config("smoke")
    # Half the smoke teacher's audio width, so the feature projections map 16 -> 32.
    config.model.audio.update(d_model=16, mlp_dim=32)
  else:
    config = _load("6spk").get_config(variant)
  if variant == "lite":
    # A sixth of the lite model's weights (1.4 M of 8.4 M): half its widths, fewer layers.
    m = config.model
    m.audio.update(cnn_channels=(8, 8, 16, 16), d_model=128, num_layers=2, mlp_dim=512)
    m.visual.update(stem_channels=8, trunk_stem_channels=16,
                    trunk_blocks=((2, 16, 2, 2), (4, 32, 1, 2), (2, 32, 2, 1),
                                  (4, 32, 1, 2)),
                    trunk_out_channels=128, embed_dim=64, d_model=64, num_layers=1,
                    mlp_dim=256)
    m.fusion.update(align_dim=16, mlp_dim=512)
    m.decoder.update(num_layers=1, mlp_dim=512)

  config.trainer = "distill"           # avsep_jax.main runs avsep_jax.distill
  config.teacher_workdir = ml_collections.config_dict.placeholder(str)  # required
  # 'configs/<file>.py[:variant]' for a teacher workdir without config.json.
  config.teacher_config = ml_collections.config_dict.placeholder(str)
  config.teacher_which = "best"        # or "latest" checkpoint of the teacher

  # Weights of the student's loss terms (avsep_jax/distill.py); 0 switches one off.
  # SI-SNR terms are in dB, the mask term in mask units ([0, 1]) and the feature term
  # relative to the teacher tokens' energy: the weights bring them to similar sizes.
  config.distill = ml_collections.ConfigDict(dict(
      supervised_weight=1.0,           # the trainer's loss against the true sources
      output_weight=1.0,               # -SI-SNR of the student's waveforms to the teacher's
      mask_weight=10.0,                # |student - teacher| main-scale masks
      feature_weight=1.0,              # projected fused tokens vs the teacher's
      features=("audio_tokens", "speaker_tokens"),
  ))
  return config
