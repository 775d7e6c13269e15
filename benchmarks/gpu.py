"""Whole-model GPU benchmark: ours int8 integer-only vs TVM fp32 / fp16 CUDA vs PyTorch, side by side.

Two halves, because the GPU box need not be able to build anything (nor be reachable from the
build machine):

``prepare DIR`` (the build machine, no GPU needed) -- for each model and batch:

* ``ours``: the integer graph (compiler.integer_front, calibrated on the real data) built for the
  GPU's arch by build_cuda (dp4a / row rules, integer-only and GPU-verifier checks), exported as a
  VM library, with ``check.npz``: real samples' integer inputs and the NumPy reference's outputs
  (what ``python -m tvm_qplugin.cuda_device_check`` compares);
* ``tvm-fp32`` / ``tvm-fp16``: the same ONNX model imported by TVM's frontend and built by TVM's
  default CUDA pipeline (operator fusion; dlight's Matmul, GEMV, Reduction, GeneralReduction,
  Fallback rules), untuned -- the
  same trial budget as ours (none) -- with the weights as function inputs (fp16: ToMixedPrecision
  with fp16 weights), so the library carries no weights and the GPU side feeds random ones: float
  kernels' speed does not depend on the values.

``run DIR`` (the GPU machine; needs numpy, TVM's runtime only -- ``TVM_USE_RUNTIME_LIB=1`` --
and, for the PyTorch peers, torch / torchvision / transformers):

* ours: bit-exact against the saved reference first (a speed figure for a wrong build is worth
  nothing);
* then every engine timed in interleaved rounds (each round times every engine once: ``NUMBER``
  back-to-back calls, one device sync), medians over rounds; latency, throughput and the ratios.
  PyTorch peers (eager, cuDNN autotuned, channels-last for the CNN; fp32 and fp16) have the
  model's architecture with random weights, speed only.

Accuracy: ours is bit-exact on the GPU with the host build, so its agreement with fp32 is the
host's (report.json of a compile / benchmarks/cnn_cpu.py, transformer_cpu.py). TensorRT and ONNX
Runtime's CUDA provider are timed when the GPU machine has them (``tensorrt`` / the provider);
the run says which peers were missing.

    python benchmarks/gpu.py prepare /tmp/gpu --models mobilenet_v2,minilm --batches 1,8 --arch sm_90
    python benchmarks/gpu.py run /tmp/gpu --json results.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]  # qplugin_zoo, tvm_qplugin (the repository's)

NUMBER = 20   # back-to-back calls per timing (one sync)
ROUNDS = 15   # interleaved rounds (median)
MINILM_SEQ = 128


# ----------------------------------------------------------------------------- build machine
def _model(name: str, batch: int):
    """(ONNX path, calibration feeds) for a catalogue model at ``batch``."""
    if name == "mobilenet_v2":
        from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx

        calib, evaluation = imagenet_calib_eval()
        return mobilenet_v2_onnx(batch=batch), {"input": calib}, {"input": evaluation[: max(batch, 8)]}
    if name == "minilm":
        from qplugin_zoo.minilm import fortune_sentences, minilm_onnx, tokenize

        feeds = tokenize(fortune_sentences(max(64, batch)), MINILM_SEQ)
        return minilm_onnx(batch=batch, seq=MINILM_SEQ), feeds, {k: v[:max(batch, 8)] for k, v in feeds.items()}
    raise SystemExit(f"unknown model {name!r}: choose mobilenet_v2 or minilm")


def prepare_ours(onnx_path, calib, evaluation, arch: str, out: Path) -> dict:
    import tvm

    from tvm_qplugin.artifact import Artifact, IOSpec
    from tvm_qplugin.build_cuda import build_cuda
    from tvm_qplugin.compile_cuda import save_cuda_build
    from tvm_qplugin.compiler import (
        CompileOptions,
        _dataset,
        compare_with_reference,
        integer_front,
    )

    t0 = time.perf_counter()
    front = integer_front(str(onnx_path), CompileOptions(), tvm.target.Target({"kind": "llvm"}), calib)
    imod = front.imod
    dtypes = {spec.name: spec.dtype for spec in front.imported.inputs}
    art = Artifact(imod.mod, [IOSpec(n, shape, qt, dtypes.get(n)) for n, shape, qt in imod.inputs],
                   [IOSpec(*o) for o in imod.outputs], False)
    built = build_cuda(imod.mod, arch)
    ds = _dataset(evaluation, front.imported.inputs, None, "evaluation")
    # no host build to compare here: the one reference loop only records (inputs, reference outputs)
    compare_with_reference(art, ds, 1, run=lambda q: [], samples=built.check_samples)
    save_cuda_build(built, out, art.integer_function)
    return {"engine": "ours-int8", "dp4a_kernels": len(built.dp4a_kernels), "build_s": time.perf_counter() - t0}


def prepare_tvm_float(onnx_path, dtype: str, arch: str, out: Path) -> dict:
    import onnx
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from tvm_qplugin.build_cuda import cuda_target

    t0 = time.perf_counter()
    mod = from_onnx(onnx.load(str(onnx_path)), keep_params_in_input=True)
    mod, _ = relax.frontend.detach_params(mod)  # the weights' values: the GPU side feeds random ones
    main = mod["main"]
    n_inputs = int(main.attrs["num_input"])
    weights = [p for p in main.params[n_inputs:]]
    if dtype == "float16":
        mod = relax.transform.ToMixedPrecision(out_dtype="float16",
                                               fp16_input_names=[p.name for p in weights])(mod)
    ex = tvm.compile(mod, target=cuda_target(arch))  # TVM's default CUDA pipeline: fusion + dlight rules
    ex.export_library(str(out / "model.so"))
    _save_ptx(ex, arch, out)
    sig = [{"shape": [int(d) for d in p.ty.shape], "dtype": str(p.ty.dtype)} for p in main.params]
    if dtype == "float16":
        for s in sig[n_inputs:]:
            s["dtype"] = "float16" if s["dtype"] == "float32" else s["dtype"]
    (out / "signature.json").write_text(json.dumps({"num_input": n_inputs, "params": sig}))
    return {"engine": f"tvm-{'fp16' if dtype == 'float16' else 'fp32'}", "build_s": time.perf_counter() - t0}


def _save_ptx(ex, arch: str, out: Path) -> None:
    """kernels.cu / kernels.ptx beside the library, as compile's OUT/cuda has them: what a
    runtime-only TVM on the GPU machine loads (cuda_device_check.provide_ptx)."""
    from tvm.support import nvcc

    from tvm_qplugin.build_cuda import _cuda_source, cuda_target

    source = _cuda_source(ex)
    with cuda_target(arch):
        ptx = nvcc.compile_cuda(source, target_format="ptx", arch=arch, compiler="nvcc").decode()
    (out / "kernels.cu").write_text(source)
    (out / "kernels.ptx").write_text(ptx)


def prepare(root: Path, models: list[str], batches: list[int], arch: str, engines: list[str]) -> None:
    root.mkdir(parents=True, exist_ok=True)
    old = json.loads((root / "manifest.json").read_text()) if (root / "manifest.json").is_file() else []
    manifest = [e for e in old if not (e["model"] in models and e["batch"] in batches and e["key"] in engines)]
    for name in models:
        for batch in batches:
            onnx_path, calib, evaluation = _model(name, batch)
            for engine in engines:
                out = root / f"{name}_b{batch}_{engine}"
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                if engine != "ours":  # save_cuda_build makes its own directory
                    out.mkdir()
                try:
                    if engine == "ours":
                        info = prepare_ours(onnx_path, calib, evaluation, arch, out)
                    else:
                        info = prepare_tvm_float(onnx_path, {"fp32": "float32", "fp16": "float16"}[engine], arch, out)
                except Exception as e:  # noqa: BLE001 - a peer that does not build is reported, not fatal
                    print(f"{name} b{batch} {engine}: build failed: {type(e).__name__}: {str(e)[:300]}", flush=True)
                    continue
                info.update(model=name, batch=batch, key=engine, dir=out.name, arch=arch)
                manifest.append(info)
                print(json.dumps(info), flush=True)
                (root / "manifest.json").write_text(json.dumps(manifest, indent=1))


# ----------------------------------------------------------------------------- GPU machine
def _tvm_engine(root: Path, entry: dict):
    """A zero-argument callable running one TVM-built engine on cuda(0), and its bit-exact verdict."""
    from tvm.runtime.vm import VirtualMachine

    from tvm_qplugin.cuda_device_check import (
        check_on_gpu,
        load_check_bundle,
        provide_ptx_of,
        runtime_with_cuda,
    )

    tvm = runtime_with_cuda()
    provide_ptx_of(root / entry["dir"])
    d = root / entry["dir"]
    dev = tvm.cuda(0)
    vm = VirtualMachine(tvm.runtime.load_module(str(d / "model.so")), dev)
    verdict = None
    if entry["engine"] == "ours-int8":
        verdict = check_on_gpu(d, runs=5)
        function, samples = load_check_bundle(d / "check.npz")
        args = [tvm.runtime.tensor(a, dev) for a in samples[0][0]]
    else:
        sig = json.loads((d / "signature.json").read_text())
        rng = np.random.default_rng(0)
        args = []
        for s in sig["params"]:
            if s["dtype"].startswith("int"):  # token ids / masks
                a = np.ones(s["shape"], s["dtype"])
            else:
                a = (rng.standard_normal(s["shape"]) * 0.05).astype(s["dtype"])
            args.append(tvm.runtime.tensor(a, dev))
        function = "main"
    f = vm[function]

    def call():
        f(*args)
    return call, dev.sync, verdict


def _torch_engine(model: str, batch: int, half: bool):
    import torch

    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    if model == "mobilenet_v2":
        import torchvision

        net = torchvision.models.mobilenet_v2().eval().to(dev).to(memory_format=torch.channels_last)
        x = torch.randn(batch, 3, 224, 224, device=dev).to(memory_format=torch.channels_last)
        feed = (x,)
    else:
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, max_position_embeddings=512)
        net = BertModel(cfg).eval().to(dev)
        feed = (torch.randint(0, 30000, (batch, MINILM_SEQ), device=dev),
                torch.ones(batch, MINILM_SEQ, dtype=torch.int64, device=dev))
    if half:
        net = net.half()
        feed = tuple(t.half() if t.is_floating_point() else t for t in feed)

    def call():
        with torch.inference_mode():
            net(*feed)
    return call, torch.cuda.synchronize, None


def _time_once(call, sync) -> float:
    sync()
    t = time.perf_counter()
    for _ in range(NUMBER):
        call()
    sync()
    return (time.perf_counter() - t) * 1e3 / NUMBER


def run(root: Path, json_out: Path | None) -> int:
    manifest = json.loads((root / "manifest.json").read_text())
    results, missing = [], []
    groups: dict[tuple, list] = {}
    for entry in manifest:
        groups.setdefault((entry["model"], entry["batch"]), []).append(entry)
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
        missing.append("torch")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        missing.append("tensorrt (TensorRT int8)")
    try:
        import onnxruntime as ort
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            missing.append(f"onnxruntime CUDAExecutionProvider (providers: {ort.get_available_providers()})")
    except ImportError:
        missing.append("onnxruntime")
    bad = 0
    for (model, batch), entries in groups.items():
        engines = {}
        for entry in entries:
            try:
                engines[entry["engine"]] = _tvm_engine(root, entry)
            except Exception as e:  # noqa: BLE001 - an engine that does not load is reported, the others run
                print(f"{model} b{batch} {entry['engine']}: failed to load/run: {type(e).__name__}: {str(e)[:300]}")
        if have_torch:
            for half in (False, True):
                name = f"torch-{'fp16' if half else 'fp32'}"
                try:
                    engines[name] = _torch_engine(model, batch, half)
                except Exception as e:  # noqa: BLE001 - a missing peer (no torchvision, ...) is reported
                    print(f"{model} b{batch} {name}: {type(e).__name__}: {str(e)[:200]}")
        for name, (call, sync, verdict) in engines.items():
            call()
            sync()
            if verdict is not None:
                bad += not verdict["bit_exact"]
                print(f"{model} b{batch} {name}: {'bit-exact' if verdict['bit_exact'] else 'NOT bit-exact'} "
                      f"on {verdict['device']} ({verdict['first_difference'] or 'all outputs equal'})", flush=True)
        times = {name: [] for name in engines}
        for _ in range(ROUNDS):
            for name, (call, sync, _) in engines.items():
                times[name].append(_time_once(call, sync))
        med = {name: float(np.median(t)) for name, t in times.items()}
        ours = med.get("ours-int8")
        for name, ms in med.items():
            row = {"model": model, "batch": batch, "engine": name, "ms": round(ms, 4),
                   "per_s": round(batch * 1e3 / ms, 1),
                   "ours_speedup": None if ours is None else round(ms / ours, 3)}
            verdict = engines[name][2]
            if verdict is not None:
                row["bit_exact"] = verdict["bit_exact"]
            results.append(row)
            print(f"{model:13s} b{batch:<3d} {name:10s} {ms:9.3f} ms {row['per_s']:10.1f}/s"
                  + ("" if ours is None else f"   ours is {ms / ours:6.2f}x faster"), flush=True)
    if missing:
        print("peers not available on this machine: " + "; ".join(missing))
    if json_out:
        json_out.write_text(json.dumps({"results": results, "missing_peers": missing}, indent=1))
    return 1 if bad else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="build the engines here (no GPU needed)")
    p.add_argument("dir", type=Path)
    p.add_argument("--models", default="mobilenet_v2,minilm")
    p.add_argument("--batches", default="1,8,64")
    p.add_argument("--engines", default="ours,fp32,fp16")
    p.add_argument("--arch", default="sm_90")
    r = sub.add_parser("run", help="check and time them on this machine's GPU")
    r.add_argument("dir", type=Path)
    r.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "prepare":
        prepare(a.dir, a.models.split(","), [int(b) for b in a.batches.split(",")], a.arch, a.engines.split(","))
        return 0
    return run(a.dir, a.json)


if __name__ == "__main__":
    sys.exit(main())
