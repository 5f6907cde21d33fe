#!/usr/bin/env python3
"""burn-quantize's int8 models side by side with PyTorch's and ONNX Runtime's, in one run.

    python3 benches/compare/compare.py                  # 3 models x {1,2} threads x batch {1,32}
    python3 benches/compare/compare.py --quick          # batch 1, 1 thread, 1 round
    python3 benches/compare/compare.py --models resnet18 --threads 1 --batch 1,32 --rounds 5

Models: torchvision's ResNet-18, MobileNetV2 and MobileNetV3-Large with seeded random weights
(speed does not depend on the values), 224x224 inputs. Peers, each quantized after calibrating
on three random batches of 4 images:

- PyTorch FX graph mode, `x86` preset (`get_default_qconfig_mapping("x86")`, engine `x86`);
- PyTorch FX graph mode, `onednn` preset (engine `onednn`);
- ONNX Runtime static int8 (`quantize_static`, QDQ, per-channel u8/s8, after `quant_pre_process`).

Ours is `cargo run --release --example bench_models -- --int8-only` (same models, the `x86`
preset). The run interleaves: every round times, per model, ours then every peer at every
configuration (threads x batch), so all see the same machine load; each configuration's figure
is the median over rounds of the per-round medians, in ms per image. Threads: ours runs in a
rayon pool of t threads, PyTorch under `torch.set_num_threads(t)`, ONNX Runtime with
`intra_op_num_threads = t`.

The Python packages (requirements.txt next to this file) are installed on first use into a
virtual environment at $BURN_QUANTIZE_VENV (default ~/.cache/burn-quantize/compare-venv); point
the variable at an existing environment to reuse it. torch is a 5-6 GB download. Not part of CI.

The last line is
`throughput: worst_ratio=<r> b1_worst_ratio=<r1> batch_gain_resnet18=<g> thread_gain_b32=<t>`:
r = max over all points of ours / best peer, r1 the same over batch-1 points, g = ResNet-18's
1-thread ms/img at batch 32 / batch 1 (ours), t = ResNet-18's batch-32 1-thread / 2-thread time
(ours).
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
VENV = Path(os.environ.get("BURN_QUANTIZE_VENV",
                           Path.home() / ".cache" / "burn-quantize" / "compare-venv"))
MODELS = ["resnet18", "mobilenet_v2", "mobilenet_v3_large"]
PEERS = ["fx_x86", "fx_onednn", "ort"]


def ensure_venv():
    """Re-runs this script inside the virtual environment, creating it first if needed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"creating {VENV} and installing {HERE / 'requirements.txt'} (torch: 5-6 GB)",
              flush=True)
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(python), "-m", "pip", "install", "-q", "-r",
                               str(HERE / "requirements.txt")])
    os.execv(str(python), [str(python), __file__, *sys.argv[1:]])


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    csv = lambda f: lambda s: [f(x) for x in s.split(",")]  # noqa: E731
    p.add_argument("--models", type=csv(str), default=MODELS)
    p.add_argument("--threads", type=csv(int), default=[1, 2])
    p.add_argument("--batch", type=csv(int), default=[1, 32])
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    p.add_argument("--inner", type=int, default=10, help="timed runs per round and config")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.threads, args.batch, args.rounds, args.inner = [1], [1], 1, 1
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown models {sorted(unknown)}; known: {MODELS}")
    return args


def cpu_name():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_flags():
    text = Path("/proc/cpuinfo").read_text()
    wanted = ["amx_int8", "avx512_vnni", "avx_vnni", "avx2"]
    return [f for f in wanted if re.search(rf"\b{f}\b", text)]


def images(torch, batch):
    return torch.randn(batch, 3, 224, 224)


def float_model(torch, name):
    import torchvision
    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def fx_int8(torch, name, engine):
    """The model quantized by PyTorch FX with `engine`'s default qconfig mapping."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = engine
    model = float_model(torch, name)
    prepared = prepare_fx(model, get_default_qconfig_mapping(engine), (images(torch, 1),))
    with torch.inference_mode():
        for _ in range(3):
            prepared(images(torch, 4))
    return convert_fx(prepared)


def ort_int8(torch, name, workdir):
    """The model exported to ONNX and quantized by ONNX Runtime (static, QDQ, per channel)."""
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    fp32, pre, int8 = (workdir / f"{name}.{s}.onnx" for s in ("fp32", "pre", "int8"))
    torch.onnx.export(float_model(torch, name), (images(torch, 1),), str(fp32),
                      input_names=["x"], output_names=["y"], opset_version=17,
                      dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False)
    quant_pre_process(str(fp32), str(pre))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"x": images(torch, 4).numpy()} for _ in range(3)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return int8


class Peers:
    """The three peer versions of one model, ready to time."""

    def __init__(self, torch, name, threads, workdir):
        import onnxruntime as ort
        self.torch = torch
        self.fx = {engine: fx_int8(torch, name, engine) for engine in ("x86", "onednn")}
        path = ort_int8(torch, name, workdir)
        self.ort = {}
        for t in threads:
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = t, 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.ort[t] = ort.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])

    def runner(self, peer, threads, x):
        """A function running `peer` once on `x` at `threads` threads."""
        torch = self.torch
        if peer == "ort":
            session, feed = self.ort[threads], {"x": x.numpy()}
            return lambda: session.run(None, feed)
        engine = peer.removeprefix("fx_")
        model = self.fx[engine]

        def run():
            torch.backends.quantized.engine = engine
            with torch.inference_mode():
                model(x)
        return run

    def time(self, peer, threads, batch, inner):
        """Median ms per image of `inner` runs after a warm-up."""
        self.torch.set_num_threads(threads)
        run = self.runner(peer, threads, images(self.torch, batch))
        run()
        run()
        times = []
        for _ in range(inner):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3 / batch)
        return statistics.median(times)


def ours(model, args):
    """ms per image of our int8 model per (threads, batch), from one bench_models run."""
    exe = REPO / "target" / "release" / "examples" / "bench_models"
    cmd = [str(exe), "--models", model, "--threads", ",".join(map(str, args.threads)),
           "--batch", ",".join(map(str, args.batch)), "--rounds", str(args.inner), "--int8-only"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    line = [l for l in out.splitlines() if l.startswith("bench_models: ")][-1]
    figures = dict(re.findall(r"\b(t\d+b\d+)=([\d.]+)", line))
    return {(t, b): float(figures[f"t{t}b{b}"]) for t in args.threads for b in args.batch}


def measure(args, torch):
    """results[model][(threads, batch)][who] = list of per-round medians (ms/img)."""
    results = {m: {(t, b): {} for t in args.threads for b in args.batch} for m in args.models}
    with tempfile.TemporaryDirectory() as workdir:
        peers = {}
        for m in args.models:
            print(f"quantizing {m} with PyTorch FX (x86, onednn) and ONNX Runtime", flush=True)
            peers[m] = Peers(torch, m, args.threads, Path(workdir))
        for r in range(args.rounds):
            for m in args.models:
                for config, ms in ours(m, args).items():
                    results[m][config].setdefault("ours", []).append(ms)
                for (t, b), row in results[m].items():
                    for peer in PEERS:
                        row.setdefault(peer, []).append(peers[m].time(peer, t, b, args.inner))
                print(f"round {r + 1}/{args.rounds} {m}: " + ", ".join(
                    f"t{t}b{b} ours {row['ours'][-1]:.2f} best peer "
                    f"{min(row[p][-1] for p in PEERS):.2f}"
                    for (t, b), row in results[m].items()), flush=True)
    return results


def report(args, results):
    """Prints the table (Markdown) and the summary line."""
    print(f"\nCPU: {cpu_name()}; flags: {' '.join(cpu_flags())}; "
          f"{os.cpu_count()} logical CPUs; torch {sys.modules['torch'].__version__}, "
          f"onnxruntime {sys.modules['onnxruntime'].__version__}; medians of {args.rounds} "
          f"interleaved rounds of {args.inner} runs, ms per image\n")
    print("| model | threads | batch | ours | FX x86 | FX onednn | ORT | best peer | ours/best |")
    print("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    ratios, med = {}, {}
    for m, configs in results.items():
        for (t, b), row in configs.items():
            med[m, t, b] = {who: statistics.median(v) for who, v in row.items()}
            best = min(med[m, t, b][p] for p in PEERS)
            ratios[m, t, b] = med[m, t, b]["ours"] / best
            cells = " | ".join(f"{med[m, t, b][w]:.2f}" for w in ["ours", *PEERS])
            print(f"| {m} | {t} | {b} | {cells} | {best:.2f} | {ratios[m, t, b]:.2f} |")
    worst = max(ratios.values())
    b1 = [r for (m, t, b), r in ratios.items() if b == 1]
    ours_at = lambda t, b: med.get(("resnet18", t, b), {}).get("ours", float("nan"))  # noqa: E731
    gain = ours_at(1, 32) / ours_at(1, 1)
    threads = ours_at(1, 32) / ours_at(2, 32)
    print(f"\nthroughput: worst_ratio={worst:.2f} b1_worst_ratio={max(b1, default=float('nan')):.2f} "
          f"batch_gain_resnet18={gain:.2f} thread_gain_b32={threads:.2f}")


def main():
    ensure_venv()
    args = parse_args()
    warnings.filterwarnings("ignore")  # torch.ao's and torch.onnx's deprecation notices
    import torch
    import onnxruntime  # noqa: F401  (imported here so a missing package fails early)
    subprocess.check_call(["cargo", "build", "--release", "--example", "bench_models"], cwd=REPO)
    report(args, measure(args, torch))


if __name__ == "__main__":
    main()
