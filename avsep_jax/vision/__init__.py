"""From video to mouth ROIs: RetinaFace (Flax) with imported weights, tracking, ROIs, video I/O.

Entry points: `pipeline.face_tracks(path)` (tracks, mouth ROIs and audio of a video),
`python -m avsep_jax.vision.detect IMAGE_OR_VIDEO --json` (detections by hand) and
`python -m avsep_jax.vision.weights` (convert the frozen graph's weights once).
"""
