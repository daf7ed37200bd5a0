"""torch_vae_bench.py - times the plain-PyTorch SD-VAE decoder
(tools/reference_vae.py, random weights) on the GPU, beside
fpdm-bench --mode vae --vae-config sd: the same shapes, in the way PyTorch
users run it (cuDNN autotuning on, channels-last tensors, fused attention).
--layout nchw keeps PyTorch's default contiguous layout instead: the pair
says whether NHWC is worth it for bf16 convolutions on this card.

    python3 tests/gpu/torch_vae_bench.py --batch 8 --latent-sizes 32,64 --dtype bf16 --json out.jsonl

Appends one JSON object per latent size ({"dtype", "batch", "latent_size",
"image_size", "ms_min", "ms_mean", "images_per_second", "peak_allocated_bytes"
and "layout") to --json and prints it. --dtype fp32 leaves cuDNN's TF32 on (PyTorch's
default for convolutions), as fpdm's bf16 decoder does. Exits 77 when torch
or a CUDA device is missing.
"""
import argparse
import json
import sys

import cuda_torch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--latent-sizes", default="32,64")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp16", "fp32"))
    parser.add_argument("--layout", default="nhwc", choices=("nhwc", "nchw"),
                        help="nhwc: channels-last tensors (default); nchw: contiguous")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--json", default=None, help="also append the results to this file")
    args = parser.parse_args()

    torch = cuda_torch.load("torch_vae_bench")
    if torch is None:
        return 77
    import reference_vae
    torch.backends.cudnn.benchmark = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    torch.manual_seed(0)
    vae = reference_vae.VAEDecoder(**reference_vae.SD_CONFIG).eval()
    memory_format = torch.channels_last if args.layout == "nhwc" else torch.contiguous_format
    vae = vae.to(device="cuda", dtype=dtype, memory_format=memory_format)

    for latent_size in (int(s) for s in args.latent_sizes.split(",")):
        latents = torch.randn(args.batch, 4, latent_size, latent_size, device="cuda") * 0.18215
        latents = latents.to(dtype).contiguous(memory_format=memory_format)
        torch.cuda.reset_peak_memory_stats()
        times = []
        with torch.no_grad():
            for run in range(args.warmup + args.repeat):
                start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                images = vae.decode(latents)
                stop.record()
                stop.synchronize()
                if run >= args.warmup:
                    times.append(start.elapsed_time(stop))
        if not torch.isfinite(images.float()).all():
            print(f"torch_vae_bench: non-finite images at latent size {latent_size}", file=sys.stderr)
            return 1
        mean = sum(times) / len(times)
        result = {"dtype": args.dtype, "layout": args.layout, "batch": args.batch, "latent_size": latent_size,
                  "image_size": latent_size * vae.upscale, "ms_min": min(times), "ms_mean": mean,
                  "images_per_second": 1000 * args.batch / mean,
                  "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
                  "torch": torch.__version__, "device": torch.cuda.get_device_name()}
        print(json.dumps(result))
        if args.json:
            with open(args.json, "a") as out:
                out.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
