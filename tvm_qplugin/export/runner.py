"""The runner: the C program that feeds a package's ``model_run`` from files, and those files.

``runner.c`` (template ``export/mcu/runner.c.in``) reads ``qin.bin`` (uint32 N, then N samples
of every input's bytes), calls ``model_run`` and writes ``qout.bin``; on Cortex-M it repaints
the stack before each call and records ``model_run``'s stack high-water in ``qstats.txt``. The
I/O sizes and types come from the package's ``qmodel.json`` (:func:`package_info`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import ModelLoadError
from .templates import fill, read_template
from .toolchain import GeneratedCodeError


def package_info(pkg) -> dict:
    """The C package's ``qmodel.json``: inputs/outputs (name, dtype, shape, scale) that a runner needs."""
    path = Path(pkg) / "qmodel.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:  # a package folder the exporter did not write (or an edited one)
        raise ModelLoadError(f"{str(path)!r} is missing or not JSON ({type(e).__name__}); {str(Path(pkg))!r} is not "
                             "a C package written by tvm-qplugin: re-create it with `tvm-qplugin compile`") from None


def runner_source(info: dict) -> str:
    """runner.c for a package described by ``info`` (its qmodel.json): static I/O buffers, fread/fwrite."""
    ins, outs = info["inputs"], info["outputs"]
    decl, reads, writes = [], [], []
    for i, sp in enumerate(ins):
        decl.append(f"static {sp['c_type']} qh_in{i}[{max(sp['elements'], 1)}] QH_ALIGN;")
        reads.append(f"    if (fread(qh_in{i}, 1, {sp['bytes']}, fi) != {sp['bytes']}) return 6;")
    for i, sp in enumerate(outs):
        decl.append(f"static {sp['c_type']} qh_out{i}[{max(sp['elements'], 1)}] QH_ALIGN;")
        writes.append(f"    if (fwrite(qh_out{i}, 1, {sp['bytes']}, fo) != {sp['bytes']}) return 8;")
    call_args = ", ".join([f"qh_in{i}" for i in range(len(ins))] + [f"qh_out{i}" for i in range(len(outs))])
    return fill(read_template("runner.c.in"), DECLS="\n".join(decl), READS="\n".join(reads),
                WRITES="\n".join(writes), CALL_ARGS=call_args)


def write_inputs(path: Path, info: dict, samples) -> None:
    """qin.bin: the sample count, then every sample's input arrays (dtype and size checked)."""
    with open(path, "wb") as f:
        f.write(np.uint32(len(samples)).tobytes())
        for sample in samples:
            if isinstance(sample, np.ndarray):
                sample = [sample]
            if len(sample) != len(info["inputs"]):
                raise ValueError(f"sample has {len(sample)} arrays, the model takes {len(info['inputs'])}")
            for a, sp in zip(sample, info["inputs"]):
                a = np.asarray(a)
                if a.dtype != np.dtype(sp["dtype"] if sp["dtype"] != "bool" else "uint8"):
                    raise ValueError(f"input {sp['name']}: dtype {a.dtype}, the model takes {sp['dtype']}")
                if a.size != sp["elements"]:
                    raise ValueError(f"input {sp['name']}: {a.size} elements, the model takes {sp['elements']}")
                f.write(np.ascontiguousarray(a).tobytes())


def read_outputs(path: Path, info: dict, n: int) -> list[list[np.ndarray]]:
    """qout.bin back as ``n`` lists of output arrays (the byte count must match exactly)."""
    data = Path(path).read_bytes()
    want = n * sum(sp["bytes"] for sp in info["outputs"])
    if len(data) != want:
        raise GeneratedCodeError(f"runner wrote {len(data)} output bytes, expected {want}")
    res, pos = [], 0
    for _ in range(n):
        outs = []
        for sp in info["outputs"]:
            a = np.frombuffer(data[pos:pos + sp["bytes"]], dtype=np.dtype(sp["dtype"])).reshape(sp["shape"]).copy()
            pos += sp["bytes"]
            outs.append(a)
        res.append(outs)
    return res
