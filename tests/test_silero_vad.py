"""Silero VAD (``silero-vad==6.2.3``, the "ifless" opset-18 file) on real speech: a streaming LSTM
voice-activity detector that branches on its sample-rate input. Compiled with
``--input-value sr=16000``: integer-only, bit-exact on the host and in the Cortex-M4 C package
under qemu, and in a closed-loop streaming run (each call gets the integer model's own previous
state, as deployed) its speech decisions agree with ONNX Runtime fp32 on espeak-ng speech."""
from __future__ import annotations

import logging

import numpy as np
import pytest

import tvm_qplugin as tq
from qplugin_zoo import silero_vad as sv

log = logging.getLogger(__name__)
SHAPES = ["input=1,576", "state=2,1,128"]


@pytest.fixture(scope="module")
def streamed():
    """Windows of the speech track, and the float model's probabilities and states along it."""
    frames = sv.windows(sv.speech_audio())
    probs, states = sv.stream(sv.onnxruntime_run(sv.silero_vad_onnx()), frames)
    assert 0.2 < (probs > 0.5).mean() < 0.9, "the track must hold both speech and pauses"
    return frames, probs, states


def _data(frames, states, picks):
    return {"input": frames[picks].reshape(len(picks), -1), "state": states[picks]}


@pytest.mark.slow
def test_silero_vad_tutorial_streams_integer_only_and_agrees_with_fp32(tmp_path):
    """tutorials/streaming_audio/vad.py as written (CLI compile, then the artifact streamed over the
    whole track, each call fed its own previous state)."""
    import json
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    r = subprocess.run([sys.executable, str(repo / "tutorials/streaming_audio/vad.py"), "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=repo, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "artifact" / "report.json").read_text())
    assert report["integer_only"] and report["float_ops"] == 0 and report["bit_exact"], report["bit_exact_kernels"]
    assert report["input_bits"] == 16 and [i["name"] for i in report["inputs"]] == ["input", "state"]
    m = re.search(r"streamed (\d+) windows: speech-decision agreement with fp32 ([0-9.]+), correlation ([0-9.]+)",
                  r.stdout)
    assert m, r.stdout
    windows, agree, corr = int(m.group(1)), float(m.group(2)), float(m.group(3))
    log.warning("silero closed-loop over %d windows: decision agreement %.4f, correlation %.4f", windows, agree, corr)
    # ONNX Runtime static int8 on the same track: 0.922, 0.860 (benchmarks/silero_vad.py)
    assert windows > 1500 and agree >= 0.95 and corr >= 0.93, (agree, corr)


@pytest.mark.slow
def test_silero_vad_c_package_on_cortex_m4_is_bit_exact(streamed, tmp_path):
    frames, _, states = streamed
    art = tq.compile(sv.silero_vad_onnx(), target="qemu-mps2-an386",
                     calib=_data(frames, states, np.arange(0, len(frames), 8)[:64]),
                     eval=_data(frames, states, np.arange(3, len(frames), 50)[:8]), input_shapes=SHAPES,
                     input_values={"sr": sv.RATE}, input_bits=16, mcu_verify_inputs=2)
    r = art.report
    assert r["integer_only"] and r["bit_exact"] and r["mcu"]["bit_exact"], r["mcu"]
    # each layer runs the candidate measured fewest instructions under qemu (hand-written C, or a
    # TensorIR kernel where one won: export/tir_kernels_cortexm_choice.py), bit-exact either way
    measured = [layer["kernel"] for layer in r["layers"] if layer["kernel"].get("instructions")]
    assert measured, "no layer's kernel was chosen by measurement"
    for kernel in measured:
        counts = {k: n for k, n in kernel["instructions"].items() if n is not None}
        assert counts[kernel["source"]] == min(counts.values()), kernel
    log.warning("silero on Cortex-M4: %s instructions per 32 ms window, arena %s bytes",
                r["mcu"]["instructions_per_inference"], r["memory"]["peak_arena_bytes"])

