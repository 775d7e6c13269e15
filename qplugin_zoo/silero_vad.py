"""Silero VAD (``silero-vad==6.2.3``, ``silero_vad_op18_ifless.onnx``) on real speech.

The model is streaming: each call takes a 512-sample window of 16 kHz audio with the 64 samples
before it (``input`` (1, 576)) and the LSTM state of the previous call (``state`` (2, 1, 128)),
and returns the speech probability and the next state. It branches on its ``sr`` input (16 kHz
or 8 kHz networks): compile with ``--input-value sr=16000``.

Audio: English sentences from Debian's ``fortunes-min`` spoken by ``espeak-ng`` (Debian package;
a real formant synthesizer, several voices and speeds), resampled to 16 kHz, alternated with
pauses of low room-like noise, so windows of speech and non-speech both occur. The calibration /
evaluation samples are ``(input, state)`` pairs along the float model's own streaming run, so
states are the ones the model really meets.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np

from .cache import atomic_path, cache_dir
from .minilm import fortune_sentences
from .packaged import packaged_file

PACKAGE = "silero-vad==6.2.3"
RATE, WINDOW, CONTEXT = 16000, 512, 64
VOICES = ("en-us", "en", "en-us+f3", "en+m3", "en-us+f4")


def silero_vad_onnx() -> Path:
    """Path of ``silero_vad_op18_ifless.onnx`` inside the installed silero-vad wheel."""
    return packaged_file("silero-vad", "silero_vad/data/silero_vad_op18_ifless.onnx", PACKAGE)


def _speak(text: str, voice: str, speed: int) -> np.ndarray:
    """``text`` spoken by espeak-ng as float32 at :data:`RATE`."""
    from scipy.signal import resample_poly

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise FileNotFoundError("espeak-ng not found: apt-get install espeak-ng (make setup does as root)")
    wav = subprocess.run([exe, "-v", voice, "-s", str(speed), "--stdout", text], capture_output=True, check=True,
                         timeout=60).stdout
    with wave.open(io.BytesIO(wav)) as w:
        rate = w.getframerate()
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768.0
    g = np.gcd(RATE, rate)
    return resample_poly(pcm, RATE // g, rate // g).astype(np.float32)


def speech_audio(n_sentences: int = 12, seed: int = 0) -> np.ndarray:
    """Spoken sentences alternated with 0.3-1.2 s noise pauses, float32 mono at 16 kHz (cached)."""
    path = cache_dir() / f"silero_speech_{n_sentences}_{seed}.npy"
    if not path.is_file():
        rng = np.random.default_rng(seed)
        parts = []
        for i, text in enumerate(fortune_sentences(n_sentences, max_words=14)):
            parts.append(rng.normal(0.0, 0.003, int(RATE * rng.uniform(0.3, 1.2))).astype(np.float32))
            parts.append(_speak(text, VOICES[i % len(VOICES)], int(rng.integers(140, 200))) * rng.uniform(0.3, 0.9))
        parts.append(np.zeros(RATE // 2, np.float32))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.concatenate(parts).astype(np.float32))
    return np.load(path)


def windows(audio: np.ndarray) -> np.ndarray:
    """``(N, 1, 576)``: each 512-sample window with its 64 samples of context (zeros before the start)."""
    padded = np.concatenate([np.zeros(CONTEXT, np.float32), audio])
    n = (len(padded) - CONTEXT) // WINDOW
    return np.stack([padded[i * WINDOW: i * WINDOW + CONTEXT + WINDOW][None] for i in range(n)])


def stream(run, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Run ``run(input, state) -> (prob, state)`` over ``frames`` as the model is deployed (each
    call gets the previous call's state). Returns the probabilities ``(N,)`` and the state each
    call received ``(N, 2, 1, 128)``."""
    state = np.zeros((2, 1, 128), np.float32)
    probs, states = [], []
    for x in frames:
        states.append(state)
        p, state = run(x, state)
        probs.append(float(np.asarray(p).reshape(-1)[0]))
    return np.array(probs), np.stack(states)


def onnxruntime_run(path: Path):
    """The float reference as ``run(input, state)`` (ONNX Runtime, sr = 16000)."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    sr = np.array(RATE, np.int64)
    return lambda x, s: sess.run(None, {"input": x, "sr": sr, "state": s})
