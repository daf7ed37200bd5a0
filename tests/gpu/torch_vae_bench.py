"""torch_vae_bench.py - times the plain-PyTorch SD-VAE decoder
(tools/reference_vae.py, random weights) on the GPU, beside
fpdm-bench --mode vae --vae-config sd: the same shapes, in the way PyTorch
users run it (cuDNN autotuning on, channels-last tensors, fused attention).
--layout nchw keeps PyTorch's default contiguous layout instead: the pair
says whether NHWC is worth it for bf16 convolutions on this card.
--device cpu times it on the CPU instead (float32, --threads threads),
beside fpdm-bench --mode vae --device cpu.

    python3 tests/gpu/torch_vae_bench.py --batch 8 --latent-sizes 32,64 --dtype bf16 --json out.jsonl
    /usr/bin/python3 tests/gpu/torch_vae_bench.py --device cpu --threads 2 --latent-sizes 32

Appends one JSON object per latent size ({"dtype", "batch", "latent_size",
"image_size", "ms_min", "ms_mean", "images_per_second", "peak_allocated_bytes"
and "layout") to --json and prints it. --dtype fp32 leaves cuDNN's TF32 on
(PyTorch's default for convolutions). Exits 77 when torch or (without
--device cpu) a CUDA device is missing.
"""
import argparse
import json
import sys
import time

import cuda_torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--latent-sizes", default="32,64")
    parser.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"),
                        help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--layout", default=None, choices=("nhwc", "nchw"),
                        help="nhwc: channels-last tensors (default on cuda); nchw: contiguous"
                             " (default on cpu)")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (--device cpu)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None, help="also append the results to this file")
    args = parser.parse_args()

    on_cpu = args.device == "cpu"
    if on_cpu and (args.dtype not in (None, "fp32") or args.layout not in (None, "nchw")):
        print("torch_vae_bench: --device cpu times float32 in the nchw layout", file=sys.stderr)
        return 2
    args.dtype = args.dtype or ("fp32" if on_cpu else "bf16")
    args.layout = args.layout or ("nchw" if on_cpu else "nhwc")
    if not on_cpu and args.threads is not None:
        print("torch_vae_bench: --threads is for --device cpu", file=sys.stderr)
        return 2
    torch = cuda_torch.load_for("torch_vae_bench", args.device)
    if torch is None:
        return 77
    import reference_vae
    if on_cpu and args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    vae = reference_vae.VAEDecoder(**reference_vae.SD_CONFIG).eval()
    memory_format = torch.channels_last if args.layout == "nhwc" else torch.contiguous_format
    vae = vae.to(device=args.device, dtype=dtype, memory_format=memory_format)

    for latent_size in (int(s) for s in args.latent_sizes.split(",")):
        latents = torch.randn(args.batch, 4, latent_size, latent_size, device=args.device) * 0.18215
        latents = latents.to(dtype).contiguous(memory_format=memory_format)
        if not on_cpu:
            torch.cuda.reset_peak_memory_stats()
        times = []
        with torch.no_grad():
            for run in range(args.warmup + args.repeat):
                if on_cpu:
                    start = time.perf_counter()
                    images = vae.decode(latents)
                    ms = 1000 * (time.perf_counter() - start)
                else:
                    start = torch.cuda.Event(enable_timing=True)
                    stop = torch.cuda.Event(enable_timing=True)
                    start.record()
                    images = vae.decode(latents)
                    stop.record()
                    stop.synchronize()
                    ms = start.elapsed_time(stop)
                if run >= args.warmup:
                    times.append(ms)
        if not torch.isfinite(images.float()).all():
            print(f"torch_vae_bench: non-finite images at latent size {latent_size}", file=sys.stderr)
            return 1
        mean = sum(times) / len(times)
        result = {"dtype": args.dtype, "layout": args.layout, "batch": args.batch, "latent_size": latent_size,
                  "image_size": latent_size * vae.upscale, "ms_min": min(times), "ms_mean": mean,
                  "images_per_second": 1000 * args.batch / mean,
                  "peak_allocated_bytes": None if on_cpu else torch.cuda.max_memory_allocated(),
                  "torch": torch.__version__,
                  "device": f"cpu, {torch.get_num_threads()} threads" if on_cpu
                  else torch.cuda.get_device_name()}
        print(json.dumps(result))
        if args.json:
            with open(args.json, "a") as out:
                out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
