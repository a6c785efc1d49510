"""Config files: every variant loads through ml_collections' config_flags path syntax."""

import pathlib

from absl import flags
import pytest
from ml_collections import config_flags

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"
TOP_LEVEL_KEYS = ("dataset", "batch_size", "total_steps", "eval_every_steps",
                  "checkpoint_every_steps", "seed")


def load(path_and_arg):
  """Loads `file.py:arg` the way `--config=` does on the command line."""
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=fv)
  fv(["prog", f"--config={path_and_arg}"])
  return fv.config


@pytest.mark.parametrize("name,slots", [("2spk.py", 2), ("6spk.py", 6)])
@pytest.mark.parametrize("variant", ["", "full", "lite", "smoke"])
def test_variants_load(name, slots, variant):
  config = load(f"{CONFIG_DIR / name}" + (f":{variant}" if variant else ""))
  assert config.model.num_speakers == slots
  assert config.max_speakers == slots
  for key in TOP_LEVEL_KEYS:
    assert key in config, key
  expected_dtype = "bfloat16" if variant in ("", "full") else "float32"
  assert config.model.dtype == expected_dtype


def test_full_has_the_design_record_dimensions():
  model = load(f"{CONFIG_DIR / '6spk.py'}").model
  assert (model.audio.num_layers, model.audio.num_heads, model.audio.d_model) == (8, 8, 512)
  assert (model.visual.num_layers, model.visual.num_heads, model.visual.d_model) == (6, 8, 256)
  assert model.roi_size == 88 and model.video_fps == 25 and model.sample_rate == 16000
  assert tuple(model.stft_scales[0]) == (512, 400, 160)


def test_unknown_variant_is_rejected():
  with pytest.raises(flags.IllegalFlagValueError, match="unknown model variant .huge."):
    load(f"{CONFIG_DIR / '6spk.py'}:huge")


@pytest.mark.parametrize("variant", ["", "lite", "stream", "full", "smoke"])
def test_lipread_trains_the_encoder_of_the_separator_it_names(variant):
  config = load(f"{CONFIG_DIR / 'lipread.py'}" + (f":{variant}" if variant else ""))
  separator = load(f"{CONFIG_DIR / '6spk.py'}:{variant or 'lite'}")
  assert config.trainer == "lipread" and config.best_metric == "frame_accuracy"
  assert config.model.visual.to_dict() == separator.model.visual.to_dict()
  assert config.model.causal == separator.model.causal
  with pytest.raises(flags.IllegalFlagValueError, match="no visual encoder"):
    load(f"{CONFIG_DIR / 'lipread.py'}:audio_only")
