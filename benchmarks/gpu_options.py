"""Epoch time of the generated loop's GPU options against the plain loop and a hand-written
loop, in one run (issue 19). For a GPU machine:

    python benchmarks/gpu_options.py --device cuda [--rounds 1] [--epochs 5]
    python benchmarks/gpu_options.py --device cpu --quick     # smoke check, no GPU needed

One real job bundle (``build_bundle``) of a convolution network (five Conv2D, two
BatchNormalization, 0.6 M parameters at ``--width 64``; 32x32x3 synthetic images whose label
is a fixed function of each image's colour, so accuracy means something) is trained once per
variant and side. The variants are the job's settings, so all of them run the same
``train.py``:

* ``plain``: fp32, no option (the behaviour of before the options);
* ``bf16``: ``precision="bf16"`` (autocast);
* ``channels_last``: ``channels_last=True``;
* ``compile``: ``compile=True`` (torch.compile, default mode);
* ``all``: bf16 + channels_last + compile;
* ``data_off``: ``data_on_device="off"`` (host memory, every batch copied): what keeping the
  data on the device (the default for data under 512 MiB, or ``"on"``) saves.

The **hand-written** side is ``handwritten.py`` (below): ``build_model()`` imported from the
same bundle's ``train.py``, the bundle's ``data.npz``, the same seeded split, batch size and
optimizer, and the same option done by hand (``torch.autocast``, ``model.to(memory_format=
torch.channels_last)``, ``torch.compile(model)``, per-batch copies); losses and accuracies are
summed on the device (no per-step synchronisation), as a GPU-minded expert writes it.

Epoch time = the ``duration`` of each epoch line (training pass + validation pass, timed
inside the process), epochs 2..N (epoch 1, with compilation and cuDNN autotuning, is reported
apart as ``first``; inductor caches what it compiled on disk, so of two sides compiling the
same graph the second pays less). Sides and variants alternate in rounds. Reported per
variant: median epoch time of ours and of the hand-written loop with the same option, and the
ratios ``variant / plain`` (ours; below 1 is faster), ``ours / hand-written`` (same option)
and ``ours / hand-written plain``.

On the CPU every process gets ``--threads`` OpenMP threads (default 1); bf16 autocast and
channels-last exist there but are no GPU figures, and torch.compile needs a C compiler (its
first epoch takes tens of seconds). ``--quick``: a small model (16x16x3, ``--width 8``), 512
samples, 2 epochs, 1 round.

Writes benchmarks/results/gpu_options_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import REPO_ROOT, RESULTS_DIR, machine_info, table, write_json

MODEL = """
network ConvNet {{
  input: ({size}, {size}, 3)
  layers:
    Conv2D(filters={w}, kernel_size=3, padding="same", activation="relu")
    BatchNormalization()
    Conv2D(filters={w}, kernel_size=3, padding="same", activation="relu")
    MaxPooling2D(2)
    Conv2D(filters={w2}, kernel_size=3, padding="same", activation="relu")
    BatchNormalization()
    Conv2D(filters={w2}, kernel_size=3, padding="same", activation="relu")
    MaxPooling2D(2)
    Conv2D(filters={w4}, kernel_size=3, padding="same", activation="relu")
    GlobalAveragePooling2D()
    Dense(256, "relu")
    Output(10, "softmax")
  loss: "sparse_categorical_crossentropy"
  optimizer: Adam(learning_rate=0.001)
  metrics: ["accuracy"]
  train {{ epochs: 4 batch_size: {batch} validation_split: 0.1 seed: 1 }}
}}
"""

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": True},
    "compile": {"compile": True},
    "all": {"precision": "bf16", "channels_last": True, "compile": True},
    "data_off": {"data_on_device": "off"},
}

HANDWRITTEN = r'''
"""The generated model trained by a hand-written loop: handwritten.py BUNDLE JOB.json"""
import contextlib
import importlib.util
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

bundle, job = Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text())
spec = importlib.util.spec_from_file_location("generated_train", bundle / "train.py")
generated = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generated)  # defines the model class and build_model(); runs nothing

device = torch.device(job["device"])
seed, batch_size, epochs = job["seed"], job["batch_size"], job["epochs"]
torch.manual_seed(seed)
generator = torch.Generator().manual_seed(seed)
with np.load(bundle / "data.npz") as data:
    x_all = torch.as_tensor(data["x_train"]).float()
    y_all = torch.as_tensor(data["y_train"]).long()
n_val = round(len(x_all) * job["validation_split"])
order = torch.randperm(len(x_all), generator=generator)
x_val, y_val = x_all[order[:n_val]], y_all[order[:n_val]]
x_train, y_train = x_all[order[n_val:]], y_all[order[n_val:]]
if job.get("data_on_device", "auto") != "off":
    x_train, y_train = x_train.to(device), y_train.to(device)
    x_val, y_val = x_val.to(device), y_val.to(device)

model = generated.build_model().to(device)
if job.get("channels_last"):
    model = model.to(memory_format=torch.channels_last)
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-7)
loss_fn = nn.CrossEntropyLoss()
run = torch.compile(model) if job.get("compile") else model
if job.get("precision") == "bf16":
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
else:
    autocast = contextlib.nullcontext

for epoch in range(1, epochs + 1):
    started = time.monotonic()
    model.train()
    permutation = torch.randperm(len(x_train), generator=generator).to(x_train.device)
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for i in range(math.ceil(len(x_train) / batch_size)):
        index = permutation[i * batch_size : (i + 1) * batch_size]
        xb = x_train[index].to(device, non_blocking=True)
        yb = y_train[index].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            logits = run(xb)
            loss = loss_fn(logits, yb)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach() * len(xb)
        correct += (logits.detach().argmax(dim=1) == yb).sum()
    model.eval()
    val_correct = torch.zeros((), device=device, dtype=torch.long)
    with torch.no_grad():
        for i in range(0, len(x_val), batch_size):
            xb = x_val[i : i + batch_size].to(device)
            yb = y_val[i : i + batch_size].to(device)
            with autocast():
                logits = run(xb)
            val_correct += (logits.argmax(dim=1) == yb).sum()
    metrics = {
        "loss": total_loss.item() / len(x_train),
        "accuracy": correct.item() / len(x_train),
        "val_accuracy": val_correct.item() / max(len(x_val), 1),
    }
    duration = time.monotonic() - started
    print(json.dumps({"event": "epoch", "epoch": epoch, "metrics": metrics,
                      "duration": duration}), flush=True)
'''


def build(directory: Path, args: argparse.Namespace) -> Path:
    """The bundle (train.py, data.npz, job.json) every variant and side trains from."""
    sys.path.insert(0, str(REPO_ROOT))
    import numpy as np

    from neural_jupyter.compiler import compile_model
    from neural_jupyter.runtime.bundle import RunSettings, build_bundle
    from neural_jupyter.runtime.data import Dataset

    source = MODEL.format(
        size=args.size, w=args.width, w2=2 * args.width, w4=4 * args.width, batch=args.batch_size
    )
    model = compile_model(source)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.samples, args.size, args.size, 3), dtype=np.float32)
    # a label the network can learn: the strongest of ten fixed mixes of the colour means
    x += rng.standard_normal((args.samples, 1, 1, 3), dtype=np.float32)  # a tint per image
    mixes = rng.standard_normal((3, 10)).astype(np.float32)
    y = (x.mean(axis=(1, 2)) @ mixes).argmax(axis=1).astype(np.int64)
    dataset = Dataset(x_train=x, y_train=y, description="synthetic images")
    settings = RunSettings.from_spec(model.spec, epochs=args.epochs, device=args.device)
    return build_bundle(model.spec, dataset, directory, settings, job_id="bench").path


def job_file(bundle: Path, variant: str) -> Path:
    """The bundle's job.json with the variant's settings (train.py reads the bundle next to
    its job file)."""
    job = json.loads((bundle / "job.json").read_text())
    job.update(VARIANTS[variant])
    path = bundle / f"job_{variant}.json"
    path.write_text(json.dumps(job, indent=2))
    return path


def run_once(bundle: Path, variant: str, side: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.device == "cpu" and args.threads > 0:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    job = job_file(bundle, variant)
    if side == "ours":
        command = [sys.executable, "-u", "train.py", "--job", job.name]
    else:
        command = [sys.executable, "-u", "handwritten.py", str(bundle), str(job)]
    done = subprocess.run(
        command, cwd=bundle, env=env, capture_output=True, text=True, timeout=args.run_timeout
    )
    events = [json.loads(x) for x in done.stdout.splitlines() if x.startswith('{"event"')]
    epochs = [e for e in events if e["event"] == "epoch"]
    if done.returncode != 0 or not epochs:
        errors = [e for e in events if e["event"] == "error"]
        reason = errors[0]["message"] if errors else done.stderr[-2000:]
        return {"variant": variant, "side": side, "failed": True, "reason": reason}
    return {
        "variant": variant,
        "side": side,
        "epoch_seconds": [e["duration"] for e in epochs],
        "val_accuracy": epochs[-1]["metrics"].get("val_accuracy"),
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    good = [r for r in runs if not r.get("failed")]
    if not good:
        return None
    later = [t for r in good for t in r["epoch_seconds"][1:]]
    return {
        "epoch_s": statistics.median(later) if later else None,
        "first_epoch_s": statistics.median(r["epoch_seconds"][0] for r in good),
        "val_accuracy": statistics.median(r["val_accuracy"] or 0.0 for r in good),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--quick", action="store_true", help="small model and data, 2 epochs")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="default 5 (quick: 2)")
    parser.add_argument("--samples", type=int, default=None)
    parser.add_argument("--size", type=int, default=None, help="image side (default 32)")
    parser.add_argument("--width", type=int, default=None, help="first conv's filters")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--threads", type=int, default=1, help="CPU only: OpenMP threads")
    parser.add_argument("--run-timeout", type=float, default=1800.0)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    if cuda:
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA GPU here (use --device cpu)")
    quick = args.quick
    args.epochs = args.epochs or (2 if quick else 5)
    args.size = args.size or (16 if quick else 32)
    args.width = args.width or (8 if quick else (64 if cuda else 16))
    args.samples = args.samples or (512 if quick else (40_000 if cuda else 4_000))
    args.batch_size = args.batch_size or (256 if cuda else 64)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or "plain" not in variants:
        parser.error(f"--variants: one or more of {', '.join(VARIANTS)}, plain included")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-options-") as temporary:
        bundle = build(Path(temporary) / "bundle", args)
        (bundle / "handwritten.py").write_text(HANDWRITTEN, encoding="utf-8")
        for round_ in range(args.rounds):
            order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
            for n, variant in enumerate(order):
                sides = ("ours", "hand") if (round_ + n) % 2 == 0 else ("hand", "ours")
                for side in sides:
                    result = run_once(bundle, variant, side, args)
                    runs.append(result)
                    shown = {k: v for k, v in result.items() if k != "epoch_seconds"}
                    if "epoch_seconds" in result:
                        shown["epoch_ms"] = [round(t * 1e3, 1) for t in result["epoch_seconds"]]
                    print(json.dumps({"round": round_, **shown}), file=sys.stderr, flush=True)
    summary: dict[str, dict[str, Any]] = {}
    for variant in variants:
        summary[variant] = {
            side: summarise([r for r in runs if r["variant"] == variant and r["side"] == side])
            for side in ("ours", "hand")
        }

    def epoch(variant: str, side: str) -> float | None:
        found = summary[variant][side]
        return found["epoch_s"] if found else None

    rows = []
    for variant in variants:
        ours, hand = epoch(variant, "ours"), epoch(variant, "hand")
        summary[variant]["ratios"] = {
            "vs_plain": ratio(ours, epoch("plain", "ours")),
            "vs_hand_same_option": ratio(ours, hand),
            "vs_hand_plain": ratio(ours, epoch("plain", "hand")),
        }

        def ms(value: float | None) -> str:
            return f"{value * 1e3:.1f}" if value else "failed"

        def x(value: float | None) -> str:
            return f"{value:.2f}" if value else "-"

        first = summary[variant]["ours"]
        r = summary[variant]["ratios"]
        rows.append(
            [
                variant,
                ms(ours),
                ms(hand),
                x(r["vs_plain"]),
                x(r["vs_hand_same_option"]),
                x(r["vs_hand_plain"]),
                ms(first["first_epoch_s"]) if first else "-",
                f"{first['val_accuracy']:.3f}" if first else "-",
            ]
        )
    print(
        table(
            [
                "variant",
                "ours ms",
                "hand ms",
                "/ plain",
                "/ hand same",
                "/ hand plain",
                "first ms",
                "val_acc",
            ],
            rows,
        )
    )
    report: dict[str, Any] = {
        "benchmark": "gpu_options",
        "device": args.device,
        "model": f"ConvNet {args.size}x{args.size}x3, width {args.width}",
        "samples": args.samples,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "rounds": args.rounds,
        "threads": args.threads if not cuda else None,
        "summary": summary,
        "runs": runs,
        "machine": machine_info(),
    }
    if cuda:
        import torch

        report["gpu"] = torch.cuda.get_device_name(0)
        print(f"GPU: {report['gpu']}")
    path = write_json(args.out or RESULTS_DIR / f"gpu_options_{args.device}.json", report)
    print(f"wrote {path}")
    return 0 if all(not r.get("failed") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
