"""torch_forward_bench.py - times PyTorch's CPU forward of a model file with
our reference network (tools/reference.py), float32, for comparison with
`fpdm-bench --model FILE` on the same weights and shapes.

    ./build/fpdm-bench --config DiT-S/2 --write-model /tmp/dit-s2.safetensors
    ./build/fpdm-bench --model /tmp/dit-s2.safetensors --batch-size 1,4 --threads 2
    /usr/bin/python3 tools/torch_forward_bench.py /tmp/dit-s2.safetensors --batch-size 1,4 --threads 2

Prints one line per batch size: seconds per forward (median) and tokens/s.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import reference  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--batch-size", default="1", help="comma-separated batch sizes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=None, help="FPDM iterations (default: the model's)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    net, cfg = reference.load_model(args.model)
    net.eval()
    size, channels = cfg["input_size"], cfg["in_channels"]
    tokens = (size // cfg["patch_size"]) ** 2
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.model}")
    print(f"{'batch':>6} {'median s':>10} {'min s':>10} {'tokens/s':>10}")
    generator = torch.Generator().manual_seed(0)
    for batch in [int(b) for b in args.batch_size.split(",")]:
        x = torch.randn(batch, channels, size, size, generator=generator)
        t = torch.randint(0, 1000, (batch,), generator=generator).float()
        y = torch.randint(0, cfg["num_classes"], (batch,), generator=generator)
        times = []
        with torch.inference_mode():
            for run in range(args.warmup + args.repeat):
                start = time.perf_counter()
                net(x, t, y, iters=args.iters)
                if run >= args.warmup:
                    times.append(time.perf_counter() - start)
        median = statistics.median(times)
        print(f"{batch:>6} {median:>10.4f} {min(times):>10.4f} {batch * tokens / median:>10.0f}")


if __name__ == "__main__":
    main()
