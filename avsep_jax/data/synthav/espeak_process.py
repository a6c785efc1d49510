"""One eSpeak NG synthesis in a fresh interpreter: the only place eSpeak speaks.

eSpeak's output depends on more than its arguments: it keeps state between calls,
draws from libc's rand() (e.g. the +Reed variant), and for some texts and variants
reads memory it never wrote, so the bytes it returns depend on whatever the process
left there. A process started for one utterance, with a fixed environment, holds the
same memory every time, and so gives the same audio on any machine, in a worker pool
or on a Beam worker. `run` starts such a process on this file:

    python -S espeak_process.py  < pickled request  > pickled (ok, result)

Standard library only (`-S`: no site packages), which keeps the start-up to a few
tens of milliseconds. Constants are from espeak-ng's speak_lib.h.
"""

import ctypes
import os
import pickle
import subprocess
import sys

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth returns when done; callback inline
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000  # return an error instead of exit(1)
_BUFFER_MS = 1000  # room for ~220 events per callback, so none are dropped
ESPEAK_RATE = 22050
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4


class _Event(ctypes.Structure):
  """espeak_EVENT, 40 bytes; `id` is the char[8] member of its union."""

  _fields_ = [
      ("type", ctypes.c_int),
      ("unique_identifier", ctypes.c_uint),
      ("text_position", ctypes.c_int),
      ("length", ctypes.c_int),
      ("audio_position", ctypes.c_int),  # ms, truncated: use `sample`
      ("sample", ctypes.c_int),  # at 22050 Hz, from the start of the synth
      ("user_data", ctypes.c_void_p),
      ("id", ctypes.c_char * 8),  # phoneme name, NUL-terminated unless 8 long
  ]


class _VoiceInfo(ctypes.Structure):
  """espeak_VOICE, 40 bytes."""

  _fields_ = [
      ("name", ctypes.c_char_p),
      ("languages", ctypes.c_void_p),  # packed strings, unused here
      ("identifier", ctypes.c_char_p),  # e.g. b"gmw/en-US+f3"
      ("gender", ctypes.c_ubyte),
      ("age", ctypes.c_ubyte),
      ("variant", ctypes.c_ubyte),
      ("xx1", ctypes.c_ubyte),
      ("score", ctypes.c_int),
      ("spare", ctypes.c_void_p),
  ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
    ctypes.POINTER(_Event))


def _synthesize(request):
  """Speaks request['text']; returns (int16 bytes at 22050 Hz, [(mnemonic, sample)])."""
  lib = ctypes.CDLL(request["library"])
  lib.espeak_Initialize.argtypes = [
      ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
  lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
  lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
  lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_VoiceInfo)
  lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
  lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
  lib.espeak_Synth.argtypes = [
      ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
      ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
  rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFFER_MS,
                               request["data"].encode(),
                               _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT)
  if rate != ESPEAK_RATE:
    raise RuntimeError(f"espeak_Initialize returned {rate}, expected {ESPEAK_RATE} "
                       f"(data at {request['data']!r}).")
  chunks, events = [], []

  def on_audio(wav, num_samples, event_list):
    if num_samples > 0:
      chunks.append(ctypes.string_at(wav, 2 * num_samples))
    i = 0
    while event_list[i].type != _EVENT_LIST_TERMINATED:
      if event_list[i].type == _EVENT_PHONEME:
        # "replace": an exception here would be swallowed by ctypes and the
        # event lost; a garbled name fails loudly in espeak_to_arpabet.
        events.append((event_list[i].id.decode("ascii", "replace"),
                       event_list[i].sample))
      i += 1
    return 0  # continue

  callback = _SynthCallback(on_audio)  # referenced until the synthesis ends
  lib.espeak_SetSynthCallback(callback)
  name, base, variant = request["name"], request["base"], request["variant"]
  status = lib.espeak_SetVoiceByName(name.encode())
  # An unknown or miscased variant returns 0 but silently plays no variant, and a
  # failed voice keeps the previous one: check what is in use.
  identifier = (lib.espeak_GetCurrentVoice().contents.identifier or b"").decode()
  used_base, _, used_variant = identifier.partition("+")
  if status != 0 or used_base.rpartition("/")[2].lower() != base or used_variant != variant:
    raise ValueError(f"eSpeak has no voice {name!r} (variant names are "
                     f"case-sensitive); it selected {identifier!r}.")
  lib.espeak_SetParameter(_PARAM_RATE, request["rate"], 0)
  lib.espeak_SetParameter(_PARAM_PITCH, request["pitch"], 0)
  lib.espeak_SetParameter(_PARAM_RANGE, request["pitch_range"], 0)
  lib.espeak_ng_SetRandSeed(request["seed"])
  encoded = request["text"].encode()
  status = lib.espeak_Synth(encoded, len(encoded) + 1, 0, _POS_CHARACTER, 0,
                            _CHARS_UTF8, None, None)
  if status != 0:
    raise RuntimeError(f"espeak_Synth failed with status {status}.")
  return b"".join(chunks), events


def run(request):
  """`_synthesize(request)` in a new interpreter on this file.

  Args:
    request: dict of plain values: library and data (paths of libespeak-ng and its
      data), name, base, variant (the voice), rate, pitch, pitch_range, seed, text.

  Returns:
    (int16 bytes at 22050 Hz, [(mnemonic, sample at 22050 Hz)]).

  Raises:
    ValueError: eSpeak has no such voice.
    RuntimeError: eSpeak failed, or the process died.
  """
  # The same environment every time (hash seed included), whoever calls.
  env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  env["PYTHONHASHSEED"] = "0"
  done = subprocess.run([sys.executable, "-S", os.path.abspath(__file__)],
                        input=pickle.dumps(request), capture_output=True, env=env,
                        check=False)
  if done.returncode != 0 or not done.stdout:
    raise RuntimeError(f"the eSpeak process failed (exit status {done.returncode}): "
                       f"{done.stderr.decode(errors='replace')[-2000:]}")
  ok, value = pickle.loads(done.stdout)
  if not ok:
    kind, message = value
    raise (ValueError if kind == "ValueError" else RuntimeError)(message)
  return value


def _main():
  request = pickle.load(sys.stdin.buffer)
  try:
    reply = (True, _synthesize(request))
  except (ValueError, RuntimeError) as e:
    reply = (False, (type(e).__name__, str(e)))
  sys.stdout.buffer.write(pickle.dumps(reply))


if __name__ == "__main__":
  _main()
