"""torch_attention_bench.py - times PyTorch's fused attention
(scaled_dot_product_attention) in bf16 on the shapes tests/gpu/bench_attention.c
times our kernel's variants on: q, k, v taken as views of one packed
[rows, tokens, 3, heads, head_dim] tensor, as DiT's qkv product leaves them
and as tests/gpu/torch_bench.py feeds them. One line per shape and PyTorch
attention backend (the default choice, then each of flash, memory-efficient and
cuDNN that runs here), in bench_attention's columns.

    python3 tests/gpu/torch_attention_bench.py [rounds]

Exits 77 when torch or a CUDA device is missing.
"""
import sys
import time

import cuda_torch

LAUNCHES_PER_ROUND = 5
HEADS, HEAD_DIM = 16, 72
SHAPES = ((128, 256), (32, 1024))


def fastest_ms(torch, run, rounds):
    """Fastest mean launch time over the rounds, in ms."""
    for _ in range(2):
        run()
    torch.cuda.synchronize()
    best = None
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(LAUNCHES_PER_ROUND):
            run()
        torch.cuda.synchronize()
        ms = 1e3 * (time.perf_counter() - start) / LAUNCHES_PER_ROUND
        best = ms if best is None else min(best, ms)
    return best


def main():
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    torch = cuda_torch.load("torch_attention_bench")
    if torch is None:
        return 77
    import torch.nn.functional as F
    backends = [("default", None)]
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        backends += [(name, getattr(SDPBackend, attr)) for name, attr in
                     (("flash", "FLASH_ATTENTION"), ("efficient", "EFFICIENT_ATTENTION"),
                      ("cudnn", "CUDNN_ATTENTION")) if hasattr(SDPBackend, attr)]
    except ImportError:
        sdpa_kernel = None
    print(f"PyTorch {torch.__version__} scaled_dot_product_attention on"
          f" {torch.cuda.get_device_name()}, bf16, {HEADS} heads x {HEAD_DIM}"
          f" (ms: fastest of {rounds} rounds of {LAUNCHES_PER_ROUND})")
    print(f"{'backend':>9} {'rows':>5} {'tokens':>6} {'ms':>9} {'TFLOP/s':>8}")
    for rows, tokens in SHAPES:
        qkv = torch.randn(rows, tokens, 3, HEADS, HEAD_DIM, device="cuda", dtype=torch.bfloat16)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        flops = 4.0 * rows * HEADS * tokens * tokens * HEAD_DIM
        for name, backend in backends:
            def run():
                if backend is None:
                    return F.scaled_dot_product_attention(q, k, v)
                with sdpa_kernel(backend):
                    return F.scaled_dot_product_attention(q, k, v)
            try:
                ms = fastest_ms(torch, run, rounds)
            except RuntimeError as error:
                print(f"{name:>9} {rows:>5} {tokens:>6} {'-':>9} {'-':>8}  not here:"
                      f" {str(error).splitlines()[0][:80]}")
                continue
            print(f"{name:>9} {rows:>5} {tokens:>6} {ms:>9.4f} {flops / (ms * 1e-3) / 1e12:>8.1f}")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
