#!/bin/bash
# test_sample_run.sh - fpdm-sample end to end on tiny random-weight pixel
# models: file names, grid, JSON report, resuming, --overwrite, determinism
# across runs and batch sizes, latents output, interruption with Ctrl-C.
#   bash tests/cli/test_sample_run.sh BUILD_DIR   (from the repository root)
set -u
build=${1:?usage: test_sample_run.sh BUILD_DIR}
sample=$build/fpdm-sample
bench=$build/fpdm-bench
[ -x "$sample" ] && [ -x "$bench" ] || { echo "SKIP: $sample or $bench not built"; exit 77; }

. "$(dirname "$0")/common.sh"
run() {  # run NAME ARGS...: fpdm-sample must succeed; stderr kept in $tmp/NAME.err
    local name=$1
    shift
    if ! "$sample" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
        echo "fpdm-sample failed in '$name':"
        sed 's/^/    /' "$tmp/$name.err"
        return 1
    fi
}

write_tiny_models "$bench"
common=(-m "$fpdm" -n 5 --steps 6 --seed 3 --class 0,1,2 --cfg-scale 2)
names="00000-0.png 00001-1.png 00002-2.png 00003-0.png 00004-1.png"

# 1. A run writes exactly the expected files, a grid and a report.
check "first run" run first "${common[@]}" -b 2 --out "$tmp/a" --grid "$tmp/grid.png" --report "$tmp/report.json"
check "file names" [ "$(cd "$tmp/a" 2>/dev/null && ls | tr '\n' ' ')" = "$names " ]
check "PNG signature" cmp -s -n 8 "$tmp/a/00000-0.png" <(printf '\x89PNG\r\n\x1a\n')
check "grid written" cmp -s -n 8 "$tmp/grid.png" <(printf '\x89PNG\r\n\x1a\n')
check "progress lines when not a terminal" grep -q "100% step 6/6, images 5/5" "$tmp/first.err"
# Three batches (2, 2, 1) of 5 images, 6 steps, guided (two rows an image),
# 4 fixed-point iterations a step.
check "summary line" grep -qE "^fpdm-sample: 5 images in [0-9.]+ s \([0-9.]+ images/s\), 0 images already on disk; 60 model evaluations \(image rows x steps\); 72 fixed-point iterations in 3 batches \(24.0 a batch\)$" "$tmp/first.err"
check "report contents" /usr/bin/python3 - "$tmp/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
steps, totals, settings = r["steps"], r["totals"], r["settings"]
assert r["tool"] == "fpdm-sample", r["tool"]
assert r["stopped_by"] is None, r["stopped_by"]
assert len(steps) == 6, len(steps)
for s in steps:
    for key in ("timestep", "iters_planned", "iters_used", "residual"):
        assert key in s, (key, s)
# Sampling runs from the noisiest timestep down.
ts = [s["timestep"] for s in steps]
assert ts == sorted(ts, reverse=True) and ts[0] > ts[-1], ts
# Three batches (2, 2, 1) each run every planned iteration without --tol.
assert totals["batches"] == 3, totals
assert all(s["iters_used"] == 3 * s["iters_planned"] for s in steps), steps
assert all(s["iters_planned"] == 4 for s in steps), steps   # tiny-fpdm: 6 - 1 - 1
assert totals["images"] == 5 and totals["images_skipped"] == 0, totals
assert totals["fixed_point_iterations"] == sum(s["iters_used"] for s in steps), totals
assert totals["model_evaluations"] > 0 and totals["seconds"] > 0, totals
assert settings["steps"] == 6 and settings["seed"] == 3 and settings["cfg_scale"] == 2, settings
assert settings["classes"] == [0, 1, 2, 0, 1], settings["classes"]
assert settings["iteration_plan"] == [4] * 6, settings
# What ran, not what was asked: the context's precision and thread count.
assert settings["precision"] == "fp32" and settings["threads"] >= 1, settings
PY
# A seed past 2^53 is recorded digit for digit (a JSON double would round it).
check "report seed" run bigseed -m "$fpdm" -n 1 --steps 1 --seed 18446744073709551615 \
    --out "$tmp/bigseed" --report "$tmp/bigseed.json"
check "report seed digits" grep -q '"seed":[[:space:]]*18446744073709551615[,}[:space:]]' "$tmp/bigseed.json"

# 2. A second run skips every batch whose files all exist: the files keep
#    an old timestamp set here, which any rewrite would replace.
touch -d 2000-01-01 "$tmp/a"/*.png
old_files() { find "$tmp/a" -name '*.png' ! -newermt 2001-01-01 | wc -l; }
check "resume run" run resume "${common[@]}" -b 2 --out "$tmp/a"
check "resume skips" [ "$(old_files)" = 5 ]
check "resume says so" grep -q "0 images in .*5 images already on disk" "$tmp/resume.err"
# A missing file makes only its batch (images 2 and 3) run again.
rm "$tmp/a/00002-2.png"
check "partial resume" run partial "${common[@]}" -b 2 --out "$tmp/a" --report "$tmp/partial.json"
check "partial resume redraws one batch" grep -q "2 images in .*3 images already on disk" "$tmp/partial.err"
check "partial resume's report sums over the one batch run" /usr/bin/python3 -c "
import json; r = json.load(open('$tmp/partial.json')); t = r['totals']
assert t['batches'] == 1 and t['images'] == 2 and t['images_skipped'] == 3, t
assert all(s['iters_used'] == s['iters_planned'] for s in r['steps']), r['steps']
"
check "partial resume keeps the rest" [ "$(old_files)" = 3 ]
check "partial resume redraws the missing file" [ -f "$tmp/a/00002-2.png" ]
# --grid tiles the PNGs read back from the folder: a rerun that skips every
# batch still writes the whole grid, the same bytes as the first run's.
check "grid of a resumed run" run grid-resume "${common[@]}" -b 2 --out "$tmp/a" --grid "$tmp/grid-resumed.png"
check "grid of a resumed run draws nothing" grep -q "0 images in .*5 images already on disk" "$tmp/grid-resume.err"
check "grid of a resumed run is the first run's" cmp -s "$tmp/grid.png" "$tmp/grid-resumed.png"

# A rerun with other settings is refused (it would skip these files and mix
# two runs' images), naming the setting; a shard of the same run is not.
if "$sample" -m "$fpdm" -n 5 --steps 7 --seed 3 --class 0,1,2 --cfg-scale 2 -b 2 --out "$tmp/a" >/dev/null 2>"$tmp/other.err"; then
    check "other settings refused" false
else
    check "other settings refused" [ $? = 2 ]
fi
check "other settings named" grep -q 'holds images drawn with other settings (there: "steps 6"; now: "steps 7")' "$tmp/other.err"
check "other settings leave the files" [ "$(old_files)" = 3 ]
check "a shard of the same run" run shard -m "$fpdm" -n 2 --first-index 5 --steps 6 --seed 3 \
    --class 0,1,2 --cfg-scale 2 --out "$tmp/a"

# 3. --overwrite rewrites every file (and takes other settings).
check "overwrite run" run overwrite "${common[@]}" -b 2 --out "$tmp/a" --overwrite
check "overwrite rewrites" [ "$(old_files)" = 0 ]

# 4. The same seed gives the same images; the noise of an image depends on
#    its index only, so batch sizes 1 and 4 give the same images too.
check "same seed run" run same "${common[@]}" -b 2 --out "$tmp/b"
check "batch 1 run" run batch1 "${common[@]}" -b 1 --out "$tmp/c"
check "batch 4 run" run batch4 "${common[@]}" -b 4 --out "$tmp/d"
identical() { for f in $names; do cmp -s "$1/$f" "$2/$f" || return 1; done; }
check "same seed, same PNGs" identical "$tmp/a" "$tmp/b"
check "batch 1 = batch 2" identical "$tmp/a" "$tmp/c"
check "batch 4 = batch 2" identical "$tmp/a" "$tmp/d"
check "other seed run" run seed4 -m "$fpdm" -n 5 --steps 6 --seed 4 --class 0,1,2 --cfg-scale 2 --out "$tmp/e"
check "another seed changes the PNGs" bash -c "! cmp -s '$tmp/a/00000-0.png' '$tmp/e/00000-0.png'"

# 5. --latents-out writes [N, C, H, W] float32 and changes nothing else.
check "latents run" run latents "${common[@]}" -b 2 --out "$tmp/f" --latents-out "$tmp/latents.npy"
check "latents shape" /usr/bin/python3 -c "
import numpy as np, sys
x = np.load('$tmp/latents.npy')
assert x.shape == (5, 1, 8, 8) and x.dtype == np.float32, (x.shape, x.dtype)
assert np.isfinite(x).all() and x.std() > 0
"
check "latents run gives the same PNGs" identical "$tmp/a" "$tmp/f"

# 6. External noise: an all-zero start differs from the built-in noise, and a
#    random step-noise file (different for every image and step) gives the
#    same images whatever the batch size, so each batch gets its own slice.
/usr/bin/python3 -c "import numpy as np; np.save('$tmp/zeros.npy', np.zeros((5, 1, 8, 8), np.float32))"
check "init noise run" run init "${common[@]}" --out "$tmp/g" --init-noise "$tmp/zeros.npy"
check "init noise used" bash -c "! cmp -s '$tmp/a/00000-0.png' '$tmp/g/00000-0.png'"
/usr/bin/python3 -c "import numpy as np; np.save('$tmp/step-noise.npy', np.random.default_rng(0).standard_normal((6, 5, 1, 8, 8)).astype(np.float32))"
check "step noise run (batches of 2)" run step2 "${common[@]}" -b 2 --out "$tmp/s2" --step-noise "$tmp/step-noise.npy"
check "step noise run (batches of 3)" run step3 "${common[@]}" -b 3 --out "$tmp/s3" --step-noise "$tmp/step-noise.npy"
check "step noise used" bash -c "! cmp -s '$tmp/a/00004-1.png' '$tmp/s2/00004-1.png'"
check "step noise sliced per batch" identical "$tmp/s2" "$tmp/s3"

# 7. DiT models, the default classes, --verbose and the iteration plan.
check "dit run" run dit -m "$dit" -n 3 --steps 4 --seed 1 --out "$tmp/h" --report "$tmp/dit.json"
check "dit files" [ "$(ls "$tmp/h" | wc -l)" = 3 ]
check "dit report" /usr/bin/python3 -c "
import json; r = json.load(open('$tmp/dit.json'))
assert r['totals']['fixed_point_iterations'] == 0 and len(r['steps']) == 4, r['totals']
assert all(0 <= c < 10 for c in r['settings']['classes'])
"
check "verbose run" run verbose -m "$fpdm" -n 1 --steps 4 --schedule increasing --budget 12 --verbose --out "$tmp/i"
check "verbose prints the plan" grep -qE "iteration plan \(sampling order\): [0-9]+,[0-9]+,[0-9]+,[0-9]+ \(total 12\)" "$tmp/verbose.err"
check "quiet run is silent" run quiet -m "$fpdm" -n 1 --steps 2 --quiet --out "$tmp/j"
check "quiet stderr empty" [ ! -s "$tmp/quiet.err" ]

# 8. Zero fixed-point iterations: --iters 0, and a model whose equivalent
#    depth is its pre and post blocks (the default of 0 iterations), sampled
#    with its defaults and with a schedule that spreads the (zero) budget.
/usr/bin/python3 - "$fpdm" "$tmp/fpdm-depth2.safetensors" <<'PY'
import sys
sys.path.insert(0, "tools")
from safetensors_io import read_raw, write_raw
header, body = read_raw(sys.argv[1])
header["__metadata__"]["fpdm.equivalent_depth"] = "2"   # pre 1 + post 1
write_raw(sys.argv[2], header, body)
PY
zero_plan() {  # zero_plan REPORT: 4 steps planned and run with no iteration
    /usr/bin/python3 -c "
import json, sys; r = json.load(open(sys.argv[1]))
assert r['settings']['iteration_plan'] == [0] * 4, r['settings']
assert r['totals']['fixed_point_iterations'] == 0 and r['totals']['model_evaluations'] > 0, r['totals']
" "$1"
}
zero=(-n 1 --steps 4 --class 3)
check "iters 0 run" run iters0 -m "$fpdm" "${zero[@]}" --iters 0 --out "$tmp/z0" --report "$tmp/iters0.json"
check "iters 0 plans zeros" zero_plan "$tmp/iters0.json"
check "zero default iters run" run depth2 -m "$tmp/fpdm-depth2.safetensors" "${zero[@]}" --out "$tmp/z1" --report "$tmp/depth2.json"
check "zero default iters plans zeros" zero_plan "$tmp/depth2.json"
check "zero default iters, increasing" run depth2inc -m "$tmp/fpdm-depth2.safetensors" "${zero[@]}" --schedule increasing --out "$tmp/z2" --report "$tmp/depth2inc.json"
check "zero default iters, increasing plans zeros" zero_plan "$tmp/depth2inc.json"
check "--iters 0 = a default of 0 iterations" cmp -s "$tmp/z0/00000-3.png" "$tmp/z1/00000-3.png"

# The grid inside the --out folder this run creates, spelled with ./ and //.
check "grid path spelled otherwise" run spelled -m "$fpdm" -n 2 --steps 2 --out "$tmp/p" \
    --grid "$tmp/p//./g.png"
check "grid written there" [ -f "$tmp/p/g.png" ]

# 9. A latent model decoded by --vae: RGB PNGs of the VAE's size, with the
#    grid inside the --out folder this run creates.
check "vae run" run vae -m tests/golden/forward-fpdm.model.safetensors \
    --vae tests/golden/vae-small.safetensors -n 3 --steps 4 --out "$tmp/v/new" --grid "$tmp/v/new/grid.png"
check "vae image size" /usr/bin/python3 - "$tmp/v/new" <<'PY'
import os, struct, sys
folder = sys.argv[1]
names = sorted(os.listdir(folder))
assert len(names) == 5 and "grid.png" in names and ".fpdm-sample-settings" in names, names
names.remove(".fpdm-sample-settings")
for name in names:
    with open(os.path.join(folder, name), "rb") as f:
        head = f.read(26)
    width, height = struct.unpack(">II", head[16:24])
    color_type = head[25]
    assert color_type == 2, (name, color_type)  # RGB
    if name != "grid.png":
        assert (width, height) == (32, 32), (name, width, height)
PY

# 10. Ctrl-C (SIGINT), a batch scheduler's SIGTERM and a closed terminal's
#    SIGHUP: exit 128 + the signal, finished images kept, no temporary files
#    left, and a report of the batches finished that names the signal. Only
#    checked when the run is still going when the signal arrives.
for stop in INT:130:Ctrl-C TERM:143:SIGTERM HUP:129:SIGHUP; do
    IFS=: read -r signal code name <<<"$stop"
    "$sample" -m "$fpdm" -n 400 -b 1 --steps 1000 --out "$tmp/k$signal" --report "$tmp/k$signal.json" \
        >/dev/null 2>"$tmp/int$signal.err" &
    pid=$!
    sleep 1
    kill -$signal $pid
    wait $pid
    rc=$?
    if [ $rc = 0 ]; then
        echo "note: the $signal test run finished before the signal; not checked"
    else
        check "$signal exit code" [ $rc = $code ]
        check "$signal message" grep -q "fpdm-sample: interrupted ($name); [0-9]* images\? drawn by this run kept in $tmp/k$signal (the same command resumes)" "$tmp/int$signal.err"
        check "$signal: no temporary files" [ -z "$(ls -A "$tmp/k$signal" | grep -v -e '^[0-9]\{5\}-[0-9]*\.png$' -e '^\.fpdm-sample-settings$')" ]
        check "$signal: report of the finished batches" /usr/bin/python3 - "$tmp/k$signal.json" \
            "$tmp/k$signal" "SIG$signal" <<'PY'
import json, os, sys
path, folder, signal_name = sys.argv[1:]
with open(path) as f:
    report = json.load(f)
kept = sum(name.endswith(".png") for name in os.listdir(folder))
totals = report["totals"]
assert report["stopped_by"] == signal_name, report["stopped_by"]
assert totals["images"] == kept and totals["batches"] == kept, (totals, kept)
# Guided by default: two network rows an image and step.
assert totals["model_evaluations"] == 2 * 1000 * kept, totals
assert len(report["steps"]) == 1000
assert all(step["iters_used"] == step["iters_planned"] * kept for step in report["steps"])
PY
    fi
done
# It ends by the signal itself, not by exiting 128 + it: bash goes on with a
# script whose child merely exited 130 after Ctrl-C.
check "ends by SIGTERM itself" /usr/bin/python3 - "$sample" "$fpdm" "$tmp/kself" <<'PY'
import signal, subprocess, sys, time
sample, model, out = sys.argv[1:]
run = subprocess.Popen([sample, "-m", model, "-n", "400", "-b", "1", "--steps", "1000", "--out", out],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
time.sleep(1)
run.send_signal(signal.SIGTERM)
_, err = run.communicate()
if run.returncode == 0:
    print("note: the run finished before the signal; not checked")
else:
    assert run.returncode == -signal.SIGTERM, (run.returncode, err[-300:])
    assert b"interrupted (SIGTERM)" in err, err[-300:]
PY

# 11. --overwrite with other settings records them only when the run
#     completes: interrupted, the folder holds images of both settings and
#     no record, so a plain rerun is refused rather than trusting them.
check "images of one run" run first-settings -m "$fpdm" -n 3 -b 1 --steps 2 --out "$tmp/m"
"$sample" -m "$fpdm" -n 400 -b 1 --steps 1000 --overwrite --out "$tmp/m" >/dev/null 2>"$tmp/int2.err" &
pid=$!
sleep 1
kill -INT $pid
wait $pid
if [ $? = 0 ]; then
    echo "note: the interrupted --overwrite run finished before Ctrl-C; not checked"
else
    check "interrupted overwrite leaves no record" [ ! -e "$tmp/m/.fpdm-sample-settings" ]
    "$sample" -m "$fpdm" -n 400 -b 1 --steps 1000 --out "$tmp/m" >/dev/null 2>"$tmp/rerun.err"
    check "a rerun after it is refused" [ $? = 2 ]
    check "the refusal says why" grep -q "holds images but no record of the settings" "$tmp/rerun.err"
fi
# A completed --overwrite records its settings.
check "overwrite to the end" run overwrite-end -m "$fpdm" -n 3 -b 1 --steps 3 --overwrite --out "$tmp/m"
check "then records them" grep -q "^steps 3$" "$tmp/m/.fpdm-sample-settings"
check "a rerun with them is accepted" run after-overwrite -m "$fpdm" -n 3 -b 1 --steps 3 --out "$tmp/m"

# 12. --npz packs the PNGs, read back from --out in index order, into arr_0
#     [N, H, W, C] uint8: the official mapping of the latents, whether the
#     images were drawn now or by an earlier run (a rerun that skips every
#     batch writes the same archive, byte for byte); RGB for a VAE run.
check "npz run" run npz "${common[@]}" -b 2 --out "$tmp/n" --npz "$tmp/n.npz" --latents-out "$tmp/n-latents.npy"
npz_check() {  # npz_check FILE N SIZE CHANNELS [LATENTS.npy]
    /usr/bin/python3 - "$@" <<'PY'
import sys, zipfile, numpy as np
path, n, size, channels = sys.argv[1], *map(int, sys.argv[2:5])
with zipfile.ZipFile(path) as z:
    assert z.namelist() == ["arr_0.npy"], z.namelist()
    assert z.infolist()[0].compress_type == zipfile.ZIP_STORED
    assert z.testzip() is None  # the CRC-32 checks
a = np.load(path)["arr_0"]
assert a.shape == (n, size, size, channels) and a.dtype == np.uint8, (a.shape, a.dtype)
assert a.std() > 0
if len(sys.argv) > 5:
    x = np.load(sys.argv[5])
    expected = np.clip(np.float32(127.5) * x + np.float32(128), 0, 255).astype(np.uint8)
    assert (a == expected.transpose(0, 2, 3, 1)).all(), "pixels differ from the latents' mapping"
PY
}
check "npz contents" npz_check "$tmp/n.npz" 5 8 1 "$tmp/n-latents.npy"
check "npz from a rerun" run npz-rerun "${common[@]}" -b 2 --out "$tmp/n" --npz "$tmp/n2.npz"
check "npz rerun skipped every batch" grep -q "0 images in .*5 images already on disk" "$tmp/npz-rerun.err"
check "npz from the folder alone = npz of the run" cmp -s "$tmp/n.npz" "$tmp/n2.npz"
check "npz of a shard" run npz-shard -m "$fpdm" -n 2 --first-index 3 --steps 6 --seed 3 --class 0,1,2 \
    --cfg-scale 2 --out "$tmp/n" --npz "$tmp/n-shard.npz"
check "npz of a shard holds its images" /usr/bin/python3 -c "
import numpy as np
whole, shard = np.load('$tmp/n.npz')['arr_0'], np.load('$tmp/n-shard.npz')['arr_0']
assert (shard == whole[3:5]).all()
"
# A batch of 70 images: PNGs written, and read back, 64 at a time.
check "npz of 70 images in one batch" run npz-70 -m "$fpdm" -n 70 -b 70 --steps 1 --out "$tmp/n70" \
    --npz "$tmp/n70.npz" --latents-out "$tmp/n70.npy"
check "npz of 70 images holds them all" npz_check "$tmp/n70.npz" 70 8 1 "$tmp/n70.npy"
check "70 PNGs written" [ "$(ls "$tmp/n70" | grep -c '\.png$')" = 70 ]
# Two shards into one folder, then the whole range packs both, drawing nothing.
check "npz shard 1" run npz-s1 -m "$fpdm" -n 3 --steps 6 --seed 3 --class 0,1,2 --cfg-scale 2 -b 2 --out "$tmp/ns"
check "npz shard 2" run npz-s2 -m "$fpdm" -n 2 --first-index 3 --steps 6 --seed 3 --class 0,1,2 --cfg-scale 2 --out "$tmp/ns"
check "npz of two shards" run npz-shards "${common[@]}" -b 2 --out "$tmp/ns" --npz "$tmp/ns.npz"
check "npz of two shards draws nothing" grep -q "0 images in .*5 images already on disk" "$tmp/npz-shards.err"
check "npz of two shards = npz of one run" cmp -s "$tmp/n.npz" "$tmp/ns.npz"
check "npz of a vae run" run npz-vae -m tests/golden/forward-fpdm.model.safetensors \
    --vae tests/golden/vae-small.safetensors -n 2 --steps 2 --out "$tmp/nv" --npz "$tmp/nv.npz"
check "npz of a vae run is RGB" npz_check "$tmp/nv.npz" 2 32 3
# A file in the folder that is not this run's PNG (here a 16-bit one) stops
# the archive, named, with nothing written.
/usr/bin/python3 - "$tmp/n/00001-1.png" <<'PY'
import struct, sys, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
rows = b"".join(b"\0" + bytes(16) for _ in range(8))  # 8 rows of 8 16-bit gray pixels
png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 8, 8, 16, 0, 0, 0, 0))
       + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
open(sys.argv[1], "wb").write(png)
PY
"$sample" "${common[@]}" -b 2 --out "$tmp/n" --npz "$tmp/n3.npz" >/dev/null 2>"$tmp/npz-bad.err"
check "npz of a foreign PNG fails" [ $? = 1 ]
check "npz failure names the file" grep -q "fpdm-sample: --npz: .*00001-1.png: a PNG of 8x8 pixels, 16-bit gray (expected: 8x8 pixels, 8-bit gray)" "$tmp/npz-bad.err"
check "npz failure writes nothing" [ -z "$(ls "$tmp" | grep n3.npz)" ]
# Without it, a rerun redraws that batch and the archive is the first one again.
rm -f "$tmp/n/00001-1.png"
check "npz after a redrawn batch" run npz-redrawn "${common[@]}" -b 2 --out "$tmp/n" --npz "$tmp/n3.npz"
check "npz redrew one batch" grep -q "2 images in .*3 images already on disk" "$tmp/npz-redrawn.err"
check "npz after a redrawn batch = npz of the run" cmp -s "$tmp/n.npz" "$tmp/n3.npz"

# 13. Writes that fail (here past a file-size limit, as on a full disk): a
#     message naming the file, exit 1, nothing half-written and no temporary
#     file left; for PNGs (stb_image_write on its own ignores such failures,
#     and a resumed run would then skip the truncated file as done), --npz
#     and --latents-out.
limited() {  # limited KB NAME ARGS...: fpdm-sample under a file-size limit of KB KiB
    local kb=$1 name=$2
    shift 2
    ( trap '' XFSZ; ulimit -f "$kb"; exec "$sample" "$@" ) >"$tmp/$name.out" 2>"$tmp/$name.err"
}
limited 2 wfail-png -m tests/golden/forward-fpdm.model.safetensors \
    --vae tests/golden/vae-small.safetensors -n 2 --steps 2 --out "$tmp/w1"
check "a failed PNG write exits 1" [ $? = 1 ]
check "a failed PNG write says so" grep -q "^fpdm-sample: .*/w1/0000[01]-[0-9]*\.png: write failed: File too large" "$tmp/wfail-png.err"
check "a failed PNG write leaves no PNG" [ -z "$(ls -A "$tmp/w1" | grep -v '^\.fpdm-sample-settings$')" ]
limited 1 wfail-npz -m "$fpdm" -n 20 --steps 2 --out "$tmp/w2" --npz "$tmp/w2.npz"
check "a failed npz write exits 1" [ $? = 1 ]
check "a failed npz write says so" grep -q "^fpdm-sample: --npz: .*w2.npz: write failed: File too large" "$tmp/wfail-npz.err"
check "a failed npz write leaves nothing" [ -z "$(ls "$tmp" | grep '^w2\.npz')" ]
check "a failed npz write keeps the PNGs" [ "$(ls "$tmp/w2" | grep -c '\.png$')" = 20 ]
limited 1 wfail-latents -m "$fpdm" -n 20 --steps 2 --out "$tmp/w3" --latents-out "$tmp/w3.npy"
check "a failed latents write exits 1" [ $? = 1 ]
check "a failed latents write says so" grep -q "^fpdm-sample: .*w3.npy: write failed: File too large" "$tmp/wfail-latents.err"
check "a failed latents write leaves nothing" [ -z "$(ls "$tmp" | grep '^w3\.npy')" ]

# 14. --shard K/N: three processes' parts of one run into one folder give the
#     run's images (its names, noise and classes), whatever the parts' sizes.
for part in 0 1 2; do
    check "shard $part/3" run "shard$part" "${common[@]}" -b 2 --shard "$part/3" --out "$tmp/parts"
done
check "three shards = one run" identical "$tmp/a" "$tmp/parts"
check "shards split 5 images 1 + 2 + 2" grep -q "fpdm-sample: 1 image in" "$tmp/shard0.err"
check "a shard's report names its range" run shard-report "${common[@]}" --shard 2/3 --out "$tmp/parts" \
    --report "$tmp/shard.json"
check "a shard's report: first index 3, 2 images" /usr/bin/python3 -c "
import json; s = json.load(open('$tmp/shard.json'))['settings']
assert s['first_index'] == 3 and s['num_images'] == 2 and s['classes'] == [0, 1], s
"

# 15. --overwrite with other classes removes the run's indices' files of the
#     old classes (their names differ from the new ones', so they would stay
#     beside them) and leaves other indices' files: another process may be
#     drawing those.
check "classes 1" run cls1 -m "$fpdm" -n 3 --steps 2 --class 1 --out "$tmp/o"
check "indices 3-4, class 1" run cls1-more -m "$fpdm" -n 2 --first-index 3 --steps 2 --class 1 --out "$tmp/o"
# Files this program does not name so are never removed, whatever they hold.
touch "$tmp/o/1-7.png" "$tmp/o/+0-7.png" "$tmp/o/0000-7.png"
check "classes 2 over them" run cls2 -m "$fpdm" -n 3 --steps 2 --class 2 --out "$tmp/o" --overwrite
check "the run's indices hold class 2 only, the others class 1" \
    [ "$(ls "$tmp/o" | grep -v 7.png | tr '\n' ' ')" = "00000-2.png 00001-2.png 00002-2.png 00003-1.png 00004-1.png " ]
check "other names are left" [ -e "$tmp/o/1-7.png" -a -e "$tmp/o/+0-7.png" -a -e "$tmp/o/0000-7.png" ]
check "the record will cover the other indices: said" \
    grep -q "also holds 2 images of indices outside 0..2, drawn with other settings" "$tmp/cls2.err"

# 16. Outputs through links reach the file the link names; special files are
#     written in place (a rename would replace /dev/stdout's file or device);
#     the settings record is as readable as the images (the umask decides).
printf old >"$tmp/target.json"
ln -s target.json "$tmp/link.json"
check "report through a link" run linked -m "$fpdm" -n 2 --steps 2 --out "$tmp/l" --report "$tmp/link.json"
check "the link stays a link" [ -L "$tmp/link.json" ]
check "its target holds the report" grep -q '"tool":' "$tmp/target.json"
check "report to standard output" run stdout-report -m "$fpdm" -n 2 --steps 2 --out "$tmp/l2" --report /dev/stdout
check "standard output holds the report" /usr/bin/python3 -c "
import json; r = json.load(open('$tmp/stdout-report.out')); assert r['totals']['images'] == 2, r
"
printf 'earlier line\n' >"$tmp/log.txt"
"$sample" -m "$fpdm" -n 2 --steps 2 --quiet --out "$tmp/l3" --report /dev/stdout >>"$tmp/log.txt"
check "report appended to a >> log" /usr/bin/python3 -c "
import json; text = open('$tmp/log.txt').read()
assert text.startswith('earlier line\n'), text[:40]
assert json.loads(text[len('earlier line\n'):])['totals']['images'] == 2
"
check "report to /dev/null" run null-report -m "$fpdm" -n 2 --steps 2 --out "$tmp/l" --report /dev/null --latents-out /dev/null
check "/dev/null stays a device" [ -c /dev/null ]
# A finished run's folder, made read-only, can still be packed: nothing is
# drawn, so nothing is written into it.
check "a run to archive" run archived -m "$fpdm" -n 2 --steps 2 --out "$tmp/archived"
chmod 555 "$tmp/archived"
mkdir -m 777 "$tmp/drop"
# Root writes anyway: as root the run is made as nobody, where it can.
as_user=()
if [ "$(id -u)" = 0 ]; then
    chmod 755 "$tmp"
    as_user=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    "${as_user[@]}" test -x "$sample" -a -r "$fpdm" 2>/dev/null || as_user=(none)
fi
if [ "${as_user[0]:-}" = none ]; then
    echo "note a read-only finished folder: no user but root can run $sample here; not run (not counted)"
else
    check "a read-only finished folder packs" "${as_user[@]}" "$sample" -m "$fpdm" -n 2 --steps 2 --quiet \
        --out "$tmp/archived" --npz "$tmp/drop/archived.npz"
fi
chmod 700 "$tmp"
chmod 755 "$tmp/archived"
check "an empty FPDM_DEVICE is unset" env FPDM_DEVICE= "$sample" -m "$fpdm" -n 1 --steps 2 --quiet --out "$tmp/empty-device"
(umask 002 && "$sample" -m "$fpdm" -n 1 --steps 2 --quiet --out "$tmp/shared")
check "the settings record follows the umask" [ "$(stat -c %a "$tmp/shared/.fpdm-sample-settings")" = 664 ]
check "as the images do" [ "$(stat -c %a "$tmp/shared"/00000-*.png)" = 664 ]

finish
