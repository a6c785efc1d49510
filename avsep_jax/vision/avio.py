"""Video and audio I/O with PyAV: any container FFmpeg reads, at 25 fps and 16 kHz mono.

Reading resamples on the fly: video frames are picked by timestamp (each output frame at
t0 + k/fps is the source frame whose timestamp is nearest, ties to the earlier), so a
stream is decoded once and never held in memory unless asked; audio is decoded to float,
averaged to mono and resampled with soxr. Times are measured from the first video frame
when a file has video, so frame k and audio samples [k*640, (k+1)*640) at 25 fps / 16 kHz
cover the same 40 ms.

Every failure a user can cause (missing file, no such stream, a file FFmpeg cannot read
or a codec it cannot decode) raises `MediaError` with the path in the message.
"""

import contextlib
import dataclasses
import math
import os
from fractions import Fraction

import av
import numpy as np
import soxr

VIDEO_FPS = 25.0
SAMPLE_RATE = 16_000


class MediaError(ValueError):
  """A media file that cannot be used: its message says which file and why."""


@dataclasses.dataclass(frozen=True)
class MediaInfo:
  """What a container holds (from its headers, before decoding).

  Attributes:
    path: the file.
    has_video / has_audio: whether it has such a stream.
    width, height: video frame size (0 without video).
    fps: the video stream's average frame rate (0.0 without video).
    duration: seconds, from the container (0.0 when unknown).
    sample_rate, channels: of the first audio stream (0 without audio).
  """

  path: str
  has_video: bool
  has_audio: bool
  width: int = 0
  height: int = 0
  fps: float = 0.0
  duration: float = 0.0
  sample_rate: int = 0
  channels: int = 0


@contextlib.contextmanager
def _open(path):
  """av.open for reading, with `MediaError`s that name the file."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise MediaError(f"no such file: {path}")
  if os.path.isdir(path):
    raise MediaError(f"{path} is a directory, not a media file")
  try:
    container = av.open(path, mode="r")
  except av.FFmpegError as e:
    raise MediaError(f"cannot read {path}: not a media file FFmpeg can open ({e})") from e
  try:
    yield container
  finally:
    container.close()


def _stream(container, kind, path):
  streams = getattr(container.streams, kind)
  if not streams:
    raise MediaError(f"{path} has no {kind} stream")
  stream = streams[0]
  if stream.codec_context is None:
    raise MediaError(f"{path}: no decoder for its {kind} codec")
  return stream


def _decode(container, stream, path):
  """container.decode(stream) with decoding failures as `MediaError`."""
  try:
    yield from container.decode(stream)
  except av.FFmpegError as e:
    codec = getattr(stream.codec_context, "name", "?")
    raise MediaError(f"cannot decode the {stream.type} stream ({codec}) of {path}: {e}") from e


def probe(path):
  """`MediaInfo` of a file, raising `MediaError` if FFmpeg cannot open it."""
  with _open(path) as c:
    v = c.streams.video[0] if c.streams.video else None
    a = c.streams.audio[0] if c.streams.audio else None
    duration = c.duration / av.time_base if c.duration else 0.0
    return MediaInfo(
        path=os.fspath(path), has_video=v is not None, has_audio=a is not None,
        width=v.codec_context.width if v is not None else 0,
        height=v.codec_context.height if v is not None else 0,
        fps=float(v.average_rate) if v is not None and v.average_rate else 0.0,
        duration=duration,
        sample_rate=a.codec_context.sample_rate if a is not None else 0,
        channels=a.codec_context.channels if a is not None else 0)


def iter_frames(path, fps=VIDEO_FPS, gray=False):
  """Decodes the first video stream, resampled to `fps` by timestamp.

  Args:
    path: any container/codec FFmpeg decodes.
    fps: output frame rate; None keeps every decoded frame.
    gray: yield (H, W) luma (BT.601, as FFmpeg's gray format) instead of RGB.

  Yields:
    (H, W, 3) uint8 RGB frames (or (H, W) uint8), frame k showing time t0 + k/fps
    (t0: the first frame's timestamp); the last source frame is held until its end.

  Raises:
    MediaError: missing/unreadable file, no video stream, undecodable codec.
  """
  fmt = "gray" if gray else "rgb24"
  with _open(path) as container:
    stream = _stream(container, "video", path)
    stream.thread_type = "AUTO"  # frame-parallel decoding; output order is unchanged
    nominal = float(stream.average_rate) if stream.average_rate else None
    t0 = prev_t = prev = prev_img = None
    step = None
    k = count = 0
    for frame in _decode(container, stream, path):
      t = frame.time
      if t is None:  # no timestamps: assume a constant rate
        t = count / (nominal or fps or VIDEO_FPS)
      count += 1
      if fps is None:
        yield frame.to_ndarray(format=fmt)
        continue
      if t0 is None:
        t0 = t
      elif prev_t is not None and t > prev_t:
        step = t - prev_t
        # Output times up to the midpoint are nearer the previous frame.
        while t0 + k / fps <= (prev_t + t) / 2:
          if prev_img is None:
            prev_img = prev.to_ndarray(format=fmt)
          yield prev_img
          k += 1
      prev_t, prev, prev_img = t, frame, None
    if count == 0:
      raise MediaError(f"{path}: its video stream has no decodable frames")
    if fps is None:
      return
    # The last frame lasts one frame period (nominal rate, else the last spacing).
    period = 1.0 / nominal if nominal else (step or 1.0 / fps)
    end = prev_t + period
    while t0 + k / fps < end - 1e-6:
      if prev_img is None:
        prev_img = prev.to_ndarray(format=fmt)
      yield prev_img
      k += 1


def read_video(path, fps=VIDEO_FPS, gray=False):
  """All frames of `iter_frames` as one (F, H, W, 3) (or (F, H, W)) uint8 array."""
  frames = list(iter_frames(path, fps=fps, gray=gray))
  return np.stack(frames)


def _video_start(container):
  """Timestamp (s) of the first video frame, or None when the file has no video."""
  if not container.streams.video:
    return None
  stream = container.streams.video[0]
  if stream.start_time is not None:
    return float(stream.start_time * stream.time_base)
  return None


def read_audio(path, sample_rate=SAMPLE_RATE, align_to_video=True):
  """Decodes the first audio stream to mono float32 at `sample_rate`.

  Args:
    path: any container/codec FFmpeg decodes.
    sample_rate: output rate (Hz); soxr's high-quality resampler.
    align_to_video: when the file has video, make sample 0 the time of the first video
      frame (zero-padding an audio stream that starts later, dropping what comes before).

  Returns:
    (T,) float32 in [-1, 1] (channels averaged).

  Raises:
    MediaError: missing/unreadable file, no audio stream, undecodable codec.
  """
  with _open(path) as container:
    stream = _stream(container, "audio", path)
    origin = _video_start(container) if align_to_video else None
    # Planar float whatever the codec's sample format; channels and rate unchanged.
    converter = av.AudioResampler(format="fltp")
    chunks, start, rate = [], None, None
    for frame in _decode(container, stream, path):
      if start is None:
        start = frame.time if frame.time is not None else 0.0
        rate = frame.sample_rate
      for f in converter.resample(frame):
        chunks.append(f.to_ndarray())
    for f in converter.resample(None):
      chunks.append(f.to_ndarray())
  if not chunks:
    raise MediaError(f"{path}: its audio stream has no decodable samples")
  audio = np.concatenate(chunks, axis=1).mean(axis=0).astype(np.float32)
  if origin is not None:
    offset = round((start - origin) * rate)
    audio = np.pad(audio, (offset, 0)) if offset > 0 else audio[-offset:]
  if rate != sample_rate:
    audio = soxr.resample(audio, rate, sample_rate, quality="HQ").astype(np.float32)
  return np.clip(audio, -1.0, 1.0)


def fit_audio_to_frames(audio, num_frames, fps=VIDEO_FPS, sample_rate=SAMPLE_RATE):
  """Pads with zeros or trims (T,) audio to exactly num_frames video frames' worth."""
  length = round(num_frames * sample_rate / fps)
  if len(audio) >= length:
    return audio[:length]
  return np.pad(audio, (0, length - len(audio)))


def write_video(path, frames, fps=VIDEO_FPS, audio=None, sample_rate=SAMPLE_RATE,
                crf=18):
  """Writes an mp4 (H.264 yuv420p, AAC) or any container FFmpeg infers from the suffix.

  Args:
    path: output file (written to a temporary name first: no partial file on failure).
    frames: (F, H, W, 3) uint8 RGB or (F, H, W) uint8 grey, or an iterable of such
      frames; odd sizes are padded by one edge pixel (yuv420p needs even sides).
    fps: frame rate (may be fractional, e.g. 30000/1001).
    audio: optional (T,) or (T, C) float in [-1, 1].
    sample_rate: of `audio`.
    crf: H.264 quality (lower is better; 18 is visually lossless).
  """
  path = os.fspath(path)
  suffix = os.path.splitext(path)[1]
  tmp = f"{path}.partial{os.getpid()}{suffix}"
  rate = Fraction(fps).limit_denominator(1001)
  try:
    with av.open(tmp, mode="w") as container:
      vstream = None
      astream = None
      if audio is not None:
        audio = np.asarray(audio, np.float32)
        if audio.ndim == 1:
          audio = audio[:, None]
        layout = {1: "mono", 2: "stereo"}.get(audio.shape[1])
        if layout is None:
          raise ValueError(f"audio must have 1 or 2 channels, got shape {audio.shape}")
      for i, frame in enumerate(frames):
        frame = np.asarray(frame, np.uint8)
        if frame.ndim == 2:
          frame = np.repeat(frame[..., None], 3, axis=-1)
        h, w = frame.shape[:2]
        if h % 2 or w % 2:
          frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        if vstream is None:
          vstream = container.add_stream("libx264", rate=rate)
          vstream.width, vstream.height = frame.shape[1], frame.shape[0]
          vstream.pix_fmt = "yuv420p"
          vstream.options = {"crf": str(crf)}
          if audio is not None:
            astream = container.add_stream("aac", rate=sample_rate, layout=layout)
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        vf.pts = i
        vf.time_base = 1 / rate
        for packet in vstream.encode(vf):
          container.mux(packet)
      if vstream is None:
        raise ValueError("write_video needs at least one frame")
      for packet in vstream.encode():
        container.mux(packet)
      if astream is not None:
        _encode_audio(container, astream, audio, sample_rate)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _encode_audio(container, stream, audio, sample_rate, chunk=1024):
  """Encodes (T, C) float audio in AAC-sized frames."""
  layout = "mono" if audio.shape[1] == 1 else "stereo"
  planar = np.ascontiguousarray(np.clip(audio, -1, 1).T)
  for start in range(0, planar.shape[1], chunk):
    frame = av.AudioFrame.from_ndarray(planar[:, start:start + chunk], format="fltp",
                                       layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = start
    frame.time_base = Fraction(1, sample_rate)
    for packet in stream.encode(frame):
      container.mux(packet)
  for packet in stream.encode():
    container.mux(packet)


def write_audio(path, audio, sample_rate=SAMPLE_RATE):
  """Writes (T,) or (T, C) float audio in [-1, 1] as 16-bit PCM wav (no partial files)."""
  import wave  # pylint: disable=import-outside-toplevel
  audio = np.asarray(audio, np.float32)
  if audio.ndim == 1:
    audio = audio[:, None]
  pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype("<i2")
  path = os.fspath(path)
  tmp = f"{path}.partial{os.getpid()}"
  try:
    with wave.open(tmp, "wb") as w:
      w.setnchannels(audio.shape[1])
      w.setsampwidth(2)
      w.setframerate(sample_rate)
      w.writeframes(pcm.tobytes())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def num_frames_at(duration, fps=VIDEO_FPS):
  """Frames `iter_frames` yields for a stream lasting `duration` seconds."""
  return max(0, math.ceil(duration * fps - 1e-6))
