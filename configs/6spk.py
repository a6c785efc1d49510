r"""Six speaker slots (2..6 real speakers per mixture), the design record's setting.

  python -m avsep_jax.main --config=configs/6spk.py            # full (ADR dims)
  python -m avsep_jax.main --config=configs/6spk.py:lite       # CPU-sized
  python -m avsep_jax.main --config=configs/6spk.py:stream     # lite, causal (streaming)
  python -m avsep_jax.main --config=configs/6spk.py:audio_only # lite, no video (baseline)
  python -m avsep_jax.main --config=configs/6spk.py:lite_masks # lite, magnitude masks (ablation)
  python -m avsep_jax.main --config=configs/6spk.py:smoke      # tests
  python -m avsep_jax.main --config=configs/6spk.py:smoke_masks # tests of the ablation
"""

import ml_collections

from avsep_jax.model import variants

NUM_SPEAKERS = 6


def get_config(arg: str = "full") -> ml_collections.ConfigDict:
  variant = arg or "full"
  config = ml_collections.ConfigDict()
  config.model = variants.model_config(variant, num_speakers=NUM_SPEAKERS)

  config.dataset = "synthav/small"
  config.data_dir = ml_collections.config_dict.placeholder(str)  # None: ~/tensorflow_datasets
  config.min_speakers = 2              # speakers per mixture sampled in [min, max]
  config.max_speakers = NUM_SPEAKERS
  config.segment_seconds = 3.0
  config.gain_db = (-5.0, 5.0)         # per-speaker level range in a mixture
  config.noise_snr_db = ml_collections.config_dict.placeholder(tuple)  # e.g. (10, 30)
  config.batch_size = 16
  config.total_steps = 200_000
  config.eval_every_steps = 2_000
  config.checkpoint_every_steps = 1_000
  config.seed = 0
  config.eval_examples = 64            # validation mixtures per evaluation
  config.test_examples = 200           # test mixtures per speaker count (--mode=evaluate)
  config.eval_pesq_stoi = True
  config.log_every_steps = 10
  config.keep_checkpoints = 3
  config.max_nonfinite_steps = 10      # non-finite losses in a row before stopping
  config.augment_video = True
  # Where training mixtures are made: 'grain' (host CPU; any process count) or
  # 'device' (the train split loaded once into device memory and mixed inside jit:
  # one process, a split that fits the device; what feeds a GPU fast enough).
  config.input = "grain"
  config.ema_decay = 0.0               # 0: no EMA of params
  # Each training batch draws one speaker count and runs with that many slots, so
  # padded slots cost nothing (about a third of them at 2..6 speakers); the step
  # compiles once per count. Host ('grain') input only.
  config.compact_slots = True

  config.learning_rate = 3e-4
  config.warmup_steps = 2_000
  config.weight_decay = 1e-2
  config.grad_clip_norm = 5.0
  config.stft_loss_weight = 0.1        # multi-resolution STFT loss, added to -SI-SNR
  config.activity_loss_weight = 1.0    # per-frame speech activity from the lips alone
  config.pit_weight = 0.0              # share of -SI-SNR under the best slot assignment
  # Supervises the fusion's video-to-audio alignment with each slot's known audio-video
  # offset (SynthAV stores it): squared error in video frames (train.alignment_loss).
  config.alignment_loss_weight = 0.0
  # The validation metric that picks the best checkpoint ('si_snri_pit': SI-SNRi under
  # the best slot assignment, for models whose slot order is arbitrary).
  config.best_metric = "si_snri"
  # Diagnostic, with model.decoder.activity_cue: the decoder's slot cue is the true
  # per-frame activity of each source (train and validation), not the lips' estimate.
  config.oracle_cue = False
  # Diagnostic, with oracle_cue: the true activity lagged by each slot's audio-video
  # offset, as the slot's video shows it (what a perfect lip reader could give).
  config.oracle_cue_lagged = False
  # Curriculum, with model.decoder.activity_cue: each training example uses the true
  # activity as its cue with a probability falling linearly from 1 to 0 over this many
  # steps, the lips' estimate otherwise; validation always uses the lips (0: off).
  # Without it the slots stayed symmetric in 650 CPU steps (BENCHMARKS.md).
  config.oracle_cue_steps = 400
  # A pretrained visual encoder to start from: a lip-reading workdir
  # (configs/lipread.py), or any separator's workdir or weights file. Frozen when
  # visual_learning_rate is 0, else fine-tuned at that peak rate (same warmup, cosine).
  config.visual_init = ml_collections.config_dict.placeholder(str)
  config.visual_learning_rate = 0.0
  # With a frozen pretrained encoder and 'grain' input: its frame features are computed
  # once per utterance and kept beside the dataset (avsep_jax/visual_cache.py), and
  # training and validation run no visual CNN (video augmentation is then off).
  config.visual_cache = True

  # Mesh axes and how logical parameter/activation axes map onto them.
  config.mesh_shape = (-1, 1, 1)       # -1: all remaining devices
  config.mesh_axes = ("data", "fsdp", "tensor")
  config.logical_axis_rules = (
      ("batch", ("data", "fsdp")),
      ("length", None),
      ("embed", "fsdp"),
      ("mlp", "tensor"),
      ("heads", "tensor"),
      ("kv", None),
      ("conv_in", None),
      ("conv_out", None),
      ("norm", None),
  )

  if variant in ("lite", "stream", "audio_only", "lite_masks"):
    config.batch_size = 4              # fits a 24 GiB CPU machine with 6 speakers x 3 s
    config.total_steps = 50_000
    if variant == "audio_only":
      # Nothing ties a voice to a slot: the loss takes the best assignment, and there
      # are no lips for the activity loss or cue.
      config.pit_weight = 1.0
      config.best_metric = "si_snri_pit"
      config.activity_loss_weight = 0.0
      config.oracle_cue_steps = 0
  elif variant in ("smoke", "smoke_masks"):
    config.dataset = "synthav/tiny"
    config.segment_seconds = 1.0
    config.batch_size = 2
    config.total_steps = 10
    config.eval_every_steps = 5
    config.checkpoint_every_steps = 5
    config.eval_examples = 4
    config.test_examples = 4
    config.eval_pesq_stoi = False
  return config
