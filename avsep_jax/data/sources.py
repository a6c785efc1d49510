"""Opening a prepared dataset split as a random-access source, with clear errors."""

import os

import tensorflow_datasets as tfds

# Config dataset names -> TFDS builder names.
_BUILDERS = {"synthav": "synth_av", "lrs2": "lrs2", "lrs3": "lrs3",
             "voxceleb2": "voxceleb2"}
# The real corpora (avsep_jax.data.corpora): their name alone means this config.
_DEFAULT_CONFIGS = {"lrs2": "main", "lrs3": "main", "voxceleb2": "main"}


def parse_name(dataset: str):
  """'synthav/small' -> ('synth_av', 'small'); 'lrs3' -> ('lrs3', 'main')."""
  family, _, config = dataset.partition("/")
  config = config or _DEFAULT_CONFIGS.get(family)
  if family not in _BUILDERS or not config:
    raise ValueError(f"unknown dataset {dataset!r}; expected one of "
                     f"{[f'{k}/<config>' for k in _BUILDERS]} or "
                     f"{sorted(_DEFAULT_CONFIGS)}")
  return _BUILDERS[family], config


def build_command(dataset: str, data_dir: str) -> str:
  """The command that builds `dataset` into `data_dir`."""
  family = dataset.partition("/")[0]
  _, config = parse_name(dataset)
  if family in _DEFAULT_CONFIGS:
    return (f"python -m avsep_jax.data.corpora --corpus {family} --config {config} "
            f"--manual_dir <the downloaded corpus> --data_dir {data_dir}")
  return f"python -m avsep_jax.data.{family} --config={config} --data_dir={data_dir}"


def dataset_dir(dataset: str, data_dir: str) -> str:
  """Directory holding the prepared dataset (any version), or where it would go."""
  builder, config = parse_name(dataset)
  return os.path.join(data_dir, builder, config)


def dataset_version(dataset: str, data_dir: str) -> str | None:
  """The prepared version `open_split` reads ('1.1.0'), or None when none is built."""
  root = dataset_dir(dataset, data_dir)
  versions = sorted(os.listdir(root)) if os.path.isdir(root) else []
  versions = [v for v in versions
              if os.path.isfile(os.path.join(root, v, "dataset_info.json"))]
  return versions[-1] if versions else None


def open_split(dataset: str, split: str, data_dir: str):
  """A prepared split as a TFDS ArrayRecord data source, plus the dataset's metadata.

  Args:
    dataset: e.g. 'synthav/tiny', 'lrs3' or 'lrs3/pretrain'.
    split: 'train', 'validation' or 'test'.
    data_dir: the TFDS data directory it was built into.

  Returns:
    (source supporting len() and [i], metadata dict).

  Raises:
    FileNotFoundError: the dataset was never built there (with the build command).
    ValueError: the split does not exist, or the directory is damaged.
  """
  root = dataset_dir(dataset, data_dir)
  version = dataset_version(dataset, data_dir)
  if version is None:
    raise FileNotFoundError(
        f"{dataset} is not built under {data_dir} (no {root}/<version>/dataset_info.json)."
        f" Build it with: {build_command(dataset, data_dir)}")
  path = os.path.join(root, version)
  try:
    builder = tfds.builder_from_directory(path)
    splits = sorted(builder.info.splits)
  except Exception as e:  # TFDS raises many types for damaged metadata
    raise ValueError(f"{dataset} at {path} is damaged ({type(e).__name__}: {e}); "
                     f"delete the directory and build it again") from e
  if split not in splits:
    raise ValueError(f"{dataset} at {path} has no split {split!r}; it has {splits}")
  try:
    source = builder.as_data_source(split=split)
    source[0]  # reads and decodes one record: catches truncated or missing files
  except Exception as e:
    raise ValueError(f"{dataset} split {split!r} at {path} is damaged "
                     f"({type(e).__name__}: {e}); delete the directory and build it "
                     f"again") from e
  return source, dict(builder.info.metadata or {})
