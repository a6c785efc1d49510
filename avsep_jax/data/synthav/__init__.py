"""SynthAV: a built-in audio-visual speech corpus made offline (eSpeak NG + rendered mouths)."""
