"""What every audio-visual dataset here stores per utterance, and at what rates.

SynthAV and the real corpora (LRS2, LRS3, VoxCeleb2) share these features, which are
what the mixing pipeline (`avsep_jax.data.pipeline`) reads; each builder adds its own
(SynthAV's phone timings, a corpus clip's id and face visibility).
"""

import numpy as np
import tensorflow_datasets as tfds

SAMPLE_RATE = 16_000
FPS = 25
ROI_SIZE = 88
SPLITS = ("train", "validation", "test")


def utterance_features() -> dict:
  """{name: tfds feature} of audio (T,) int16 at 16 kHz, video (F, 88, 88) uint8 mouth
  ROIs at 25 fps, text, speaker id and the speaker's index in its split."""
  return {
      "audio": tfds.features.Tensor(shape=(None,), dtype=np.int16, encoding="zlib",
                                    doc="16 kHz mono, int16"),
      "video": tfds.features.Tensor(shape=(None, ROI_SIZE, ROI_SIZE), dtype=np.uint8,
                                    encoding="zlib", doc="25 fps grayscale mouth ROI"),
      "text": tfds.features.Text(),
      "speaker_id": tfds.features.Text(),
      "speaker_index": tfds.features.Scalar(dtype=np.int32,
                                            doc="index of the speaker in its split"),
  }
