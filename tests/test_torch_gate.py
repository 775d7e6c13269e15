"""tvm_qplugin/torch_gate.py: a CLI process never loads PyTorch for TVM, yet our own code still can.
(The torch-using commands end to end: test_mixed_cli.py's ``sensitivity``, test_report_html.py's
``--calib distill``.)"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _python(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_command_that_imports_tvm_does_not_load_torch():
    probe = ("import contextlib, io, sys\nfrom tvm_qplugin.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n    rc = main(['targets'])\n"
             "print(rc, 'tvm' in sys.modules, 'torch' in sys.modules)\n")
    r = _python("-c", probe)
    assert r.returncode == 0, r.stderr
    rc, tvm_loaded, torch_loaded = r.stdout.split()
    assert rc == "0" and tvm_loaded == "True", f"{r.stdout}: the command must import TVM, or this test proves nothing"
    assert torch_loaded == "False", "torch was imported"


def test_gate_refuses_only_tvms_imports():
    probe = ("import sys\nfrom tvm_qplugin import torch_gate\ntorch_gate.install()\ntorch_gate.install()\n"
             "import tvm\nassert 'torch' not in sys.modules, 'tvm loaded torch'\n"
             "assert sum(type(f).__name__ == '_RefuseTorchFromTVM' for f in sys.meta_path) == 1\n"
             "from tvm_qplugin.mixed.fake_quant import quantize_activation\nimport torch\n"
             "y = quantize_activation(torch.tensor([0.26, -1.0]), 2, -1.0, 2.0)  # scale 1, zero point 1\n"
             "print(y.tolist())\n")
    r = _python("-c", probe)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["[0.0,", "-1.0]"], r.stdout
