"""Real audio-visual corpora as TFDS datasets: LRS2, LRS3 and VoxCeleb2.

Each is read from its official layout in a manual download directory and preprocessed by
our face pipeline into SynthAV's features, so the trainer mixes them the same way:

    python -m avsep_jax.data.corpora --corpus lrs3 --manual_dir ~/data/lrs3 \\
        --data_dir ~/tensorflow_datasets
    python -m avsep_jax.main --config=configs/2spk.py --config.dataset=lrs3
"""

from avsep_jax.data.corpora import common
from avsep_jax.data.corpora.lrs2 import LRS2
from avsep_jax.data.corpora.lrs3 import LRS3
from avsep_jax.data.corpora.voxceleb2 import VoxCeleb2

# Dataset family name (as in `--config.dataset=lrs3[/config]`) -> builder.
BUILDERS = {"lrs2": LRS2, "lrs3": LRS3, "voxceleb2": VoxCeleb2}


def build(corpus, manual_dir, data_dir, config=None, num_workers=None, use_beam=None,
          beam_pipeline_options=None):
  """Builds one corpus (see `common.build`); returns the prepared builder."""
  if corpus not in BUILDERS:
    raise ValueError(f"unknown corpus {corpus!r}; choose from {sorted(BUILDERS)}")
  return common.build(BUILDERS[corpus], manual_dir, data_dir, config, num_workers,
                      use_beam, beam_pipeline_options)
