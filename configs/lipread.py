r"""Lip-reading pretraining of a separator's visual encoder: per-frame visemes.

  python -m avsep_jax.main --config=configs/lipread.py:lite --workdir=DIR
  python -m avsep_jax.main --config=configs/2spk.py:lite --config.visual_init=DIR ...

The variant names the separator whose encoder is trained (`configs/6spk.py`'s
variants); its `config.model` is kept whole, so the encoder's shapes and layer
options are the separator's. Sized so that `lite` trains in 30 minutes on 2 CPU cores.
"""

import importlib.util
import pathlib

import ml_collections

_spec = importlib.util.spec_from_file_location(
    "six_speaker_config", pathlib.Path(__file__).with_name("6spk.py"))
_six = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_six)


def get_config(arg: str = "lite") -> ml_collections.ConfigDict:
  variant = arg or "lite"
  if variant == "audio_only":
    raise ValueError("audio_only has no visual encoder to pretrain")
  config = _six.get_config(variant)
  config.trainer = "lipread"
  config.segment_seconds = 2.0         # clip length: 50 frames
  config.batch_size = 8                # clips
  config.learning_rate = 1e-3
  config.warmup_steps = 50
  # 1.8 s a step on 2 cores: 800 steps and 4 validations in about 26 minutes.
  config.total_steps = 800
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 100
  config.eval_examples = 96            # validation clips (voices never trained on)
  config.test_examples = 240           # test clips (--mode=evaluate)
  config.best_metric = "frame_accuracy"
  if variant == "smoke":
    config.dataset = "synthav/tiny"
    config.segment_seconds = 1.0
    config.batch_size = 2
    config.total_steps = 4
    config.eval_every_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_examples = 4
    config.test_examples = 4
  return config
