"""Forward + backward time per sample and peak RSS of every demo model on CPU.

This is what the demo's time budget is planned from. Each model runs in its own subprocess so
that peak RSS (``ru_maxrss``) is that model's alone. Batch 4 (2D) / 2 (3D) at the demo patch,
float32 (CPU training does not autocast), ``torch.set_num_threads(threads)``.

    bash scripts/env.sh python bench/models.py [--threads 2] [--steps 5] [--preset demo]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _one(name: str, dim: str, preset: str, threads: int, steps: int) -> dict[str, float]:
    import torch

    from cellseg.classes import NUM_CLASSES
    from cellseg.models import build_model, input_rule

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    model = build_model(name, dim, preset=preset).train()
    shape = input_rule(name, dim, preset).default
    batch = 4 if dim == "2d" else 2
    x = torch.randn(batch, 1, *shape)
    target = torch.rand(batch, NUM_CLASSES, *shape).round()
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        model.zero_grad(set_to_none=True)
        p = torch.sigmoid(model(x))
        loss = (1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)).mean()
        loss.backward()
        if step:  # the first step pays for allocator warm-up and lazy initialisation
            times.append(time.perf_counter() - start)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "shape": list(shape),
        "batch": batch,
        "ms_per_sample": 1000 * statistics.median(times) / batch,
        "ms_per_sample_min": 1000 * min(times) / batch,
        "peak_rss_mb": peak_kb / 1024,
        "import_rss_mb": baseline_kb / 1024,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--one", nargs=2, metavar=("NAME", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(_one(*args.one, args.preset, args.threads, args.steps)))
        return 0
    from cellseg.models import list_models

    print(
        f"preset {args.preset}, {args.threads} threads, median of {args.steps} steps "
        "(forward + backward, float32, CPU)"
    )
    print(
        f"{'model':8} {'dim':3} {'input':>10} {'batch':>5} {'params':>9} "
        f"{'ms/sample':>9} {'min':>6} {'peak RSS MB':>11}"
    )
    total = 0.0
    for name, dim in list_models():
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one",
                name,
                dim,
                "--preset",
                args.preset,
                "--threads",
                str(args.threads),
                "--steps",
                str(args.steps),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        r = json.loads(out.stdout.strip().splitlines()[-1])
        total += r["ms_per_sample"]
        print(
            f"{name:8} {dim:3} {'x'.join(map(str, r['shape'])):>10} {r['batch']:>5} "
            f"{r['params']:>9,} {r['ms_per_sample']:>9.1f} {r['ms_per_sample_min']:>6.1f} "
            f"{r['peak_rss_mb']:>11.0f}",
            flush=True,
        )
    print(f"sum over the 8 models: {total:.1f} ms per sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
