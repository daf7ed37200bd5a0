"""torch_bench.py - times the PyTorch reference network (tools/reference.py)
on the GPU, for comparison with fpdm-bench: the same named configurations and
shapes, with attention replaced by torch's fused scaled_dot_product_attention.

    python3 tests/gpu/torch_bench.py --config DiT-XL/2 --batch-size 32 --dtype bf16 --json out.json

Prints one JSON object ({"config", "dtype", "batch_size", "iters", "ms_min",
"ms_mean", "attention", "peak_allocated_bytes", ...}) per run; --batch-size
counts network rows (with classifier-free guidance, twice the images). Exits
77 when torch or a CUDA device is missing.
"""
import argparse
import json
import math
import sys
import time

import cuda_torch

CONFIGS = {
    "DiT-XL/2": dict(architecture="dit", hidden_size=1152, num_heads=16, depth=28),
    "DiT-B/2": dict(architecture="dit", hidden_size=768, num_heads=12, depth=12),
    "DiT-S/2": dict(architecture="dit", hidden_size=384, num_heads=6, depth=12),
    "FPDM-XL/2": dict(architecture="fpdm", hidden_size=1152, num_heads=16, pre_depth=1,
                      post_depth=1, equivalent_depth=28),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="DiT-XL/2", choices=sorted(CONFIGS))
    parser.add_argument("--image-size", type=int, default=256, choices=(256, 512))
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--iters", type=int, default=None, help="FPDM iterations (default: the model's)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None, help="also append the result to this file")
    args = parser.parse_args()

    torch = cuda_torch.load("torch_bench")
    if torch is None:
        return 77
    import torch.nn.functional as F
    import reference
    # fp32 means fp32: no TF32 on either side of the comparison.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def fused_attention(self, x):
        batch, tokens, hidden = x.shape
        head_dim = hidden // self.num_heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, hidden))

    # torch < 2.0 has no fused attention: the reference's explicit softmax stays.
    fused = hasattr(F, "scaled_dot_product_attention")
    if fused:
        reference.Attention.forward = fused_attention

    cfg = dict(CONFIGS[args.config], patch_size=2, input_size=args.image_size // 8, in_channels=4,
               num_classes=1000, learn_sigma=True)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    device = torch.device("cuda")
    torch.manual_seed(0)
    net = reference.Net(cfg).to(device=device, dtype=dtype).eval()
    size = cfg["input_size"]
    x = torch.randn(args.batch_size, 4, size, size, device=device, dtype=dtype)
    t = torch.randint(0, 1000, (args.batch_size,), device=device).to(dtype)
    y = torch.randint(0, 1000, (args.batch_size,), device=device)
    iters = args.iters if args.iters is not None else (net.default_iters() if net.fixed_point else None)

    times = []
    torch.cuda.reset_peak_memory_stats()
    with torch.inference_mode():
        for run in range(args.warmup + args.repeat):
            torch.cuda.synchronize()
            start = time.perf_counter()
            out, _ = net(x, t, y, iters=iters)
            torch.cuda.synchronize()
            if run >= args.warmup:
                times.append(time.perf_counter() - start)
    if not torch.isfinite(out.float()).all():
        print("torch_bench: non-finite output", file=sys.stderr)
        return 1
    result = {
        "config": args.config, "image_size": args.image_size, "dtype": args.dtype,
        "batch_size": args.batch_size, "iters": iters if net.fixed_point else None,
        "ms_min": 1000 * min(times), "ms_mean": 1000 * sum(times) / len(times),
        "attention": "sdpa" if fused else "explicit", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "parameters": sum(p.numel() for p in net.parameters()),
        # Tensors only: the caching allocator's reserve and the CUDA context come on top.
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
    }
    line = json.dumps(result)
    print(line)
    if args.json:
        with open(args.json, "a") as f:
            f.write(line + "\n")
    return 0 if all(math.isfinite(v) for v in times) else 1


if __name__ == "__main__":
    sys.exit(main())
