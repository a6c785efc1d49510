r"""Two speaker slots: every mixture has exactly two talkers.

  python -m avsep_jax.main --config=configs/2spk.py[:lite|:stream|:smoke]
"""

import importlib.util
import pathlib

import ml_collections

# The six-speaker file holds every shared setting; this one changes the speaker count.
_spec = importlib.util.spec_from_file_location(
    "six_speaker_config", pathlib.Path(__file__).with_name("6spk.py"))
_six = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_six)


def get_config(arg: str = "full") -> ml_collections.ConfigDict:
  config = _six.get_config(arg)
  config.model.num_speakers = 2
  config.min_speakers = config.max_speakers = 2
  config.batch_size *= 2
  return config
