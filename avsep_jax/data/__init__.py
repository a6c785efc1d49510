"""Datasets and the input pipeline: SynthAV (built in), real corpora, on-the-fly mixing."""
