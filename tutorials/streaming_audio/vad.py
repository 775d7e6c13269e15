"""Silero VAD compiled integer-only and run as a stream -- the tutorial's steps as one script.

    python tutorials/streaming_audio/vad.py --out out/vad [--windows N]

(tests/test_silero_vad.py runs it and checks what it prints.) Prints one line: the windows
streamed, the speech-decision agreement and the probability correlation with the float model.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="out/vad")
    p.add_argument("--windows", type=int, default=0, help="stream only the first N windows of the track (0: all)")
    a = p.parse_args()

    import tvm_qplugin as tq
    from qplugin_zoo import silero_vad as sv

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = sv.silero_vad_onnx()
    frames = sv.windows(sv.speech_audio())[: a.windows or None]            # 1. data
    probs, states = sv.stream(sv.onnxruntime_run(model), frames)
    np.savez(out / "calib.npz", input=frames[::4, 0], state=states[::4])
    r = subprocess.run([sys.executable, "-m", "tvm_qplugin", "compile", str(model), "--calib", str(out / "calib.npz"),
                        "--input-shape", "input=1,576", "--input-shape", "state=2,1,128",
                        "--input-value", f"sr={sv.RATE}", "--input-bits", "16", "-o", str(out / "artifact"),
                        "--no-progress"], cwd=REPO)                       # 2. compile
    if r.returncode != 0:
        return r.returncode
    art = tq.load(out / "artifact")                                        # 3. stream
    state = np.zeros((2, 1, 128), np.float32)
    got = []
    for x in frames:
        prob, state = art.run({"input": x, "state": state})
        got.append(float(prob.reshape(-1)[0]))
    got = np.array(got)
    agree = float(((got > 0.5) == (probs > 0.5)).mean())
    corr = float(np.corrcoef(got, probs)[0, 1])
    print(f"streamed {len(frames)} windows: speech-decision agreement with fp32 {agree:.4f}, correlation {corr:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
