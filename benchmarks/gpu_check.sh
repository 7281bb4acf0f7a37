#!/usr/bin/env bash
# The one script to run on a lent H200 (PyTorch 2.11 + CUDA there, no internet), in at most 6 minutes:
#   1. setup   carried wheels from .whl/ into /tmp/site, PYTHONPATH=/tmp/site:<repo> (the system torch is untouched)
#   2. info    nvidia-smi, torch / CUDA / numba / numpy versions
#   3. tests   the CUDA-marked tests (pytest -m cuda), only the files that collect (some need packages not there)
#   4. lego    benchmarks/full_protocol.py on lego: preset syn (30k schedule), training stopped at a wall-clock limit
#              (GPU_CHECK_TRAIN_SECONDS, default 150), the staged test views, one compression at 1MB with a short
#              fine-tune (300 steps); prints it/s, rays/s and the extrapolated time for 30k iterations
#   5. summary $OUT/gpu_check.json (stage timings + the measured rates) and $OUT/gpu_check.log
#
# Data: ../shared does not travel to the device machine, so run `benchmarks/gpu_check.sh --prepare` here first. It stages
# lego (transforms, the 100 train images, every 8th test image under a trimmed transforms_test.json, 800x800 if the
# 64 MiB carry limit allows, else a 400x400 copy) and the LPIPS-alex weights into .gpu_data/, and the wheels of the
# dependencies the device image lacks into .whl/ (both ignored by git). Then, with the device tool:
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu_data"], timeout_s=420)
#
# Dry run on a CPU machine (proves the logic; CUDA tests are only collected, not run):
#   GPU_CHECK_DEVICE=cpu OUT=/tmp/gpu_check_dry benchmarks/gpu_check.sh
#
# Knobs (environment): GPU_CHECK_DEVICE (cuda), GPU_CHECK_TRAIN_SECONDS (150; cpu: 20), GPU_CHECK_DOWNSCALE (1; cpu: 16),
# GPU_CHECK_FINETUNE_ITERS (300; cpu: 10), GPU_CHECK_ITERS (30000), GPU_CHECK_EVERY (from the staged data: 1 for the
# trimmed test split, else 8), GPU_CHECK_GRID_INIT / GPU_CHECK_GRID_FINAL (unset; cpu: 32 / 48),
# GPU_CHECK_TEST_TIMEOUT (150), GPU_CHECK_TOTAL_SECONDS (360; cpu: 600), VQRF_DATA (.gpu_data), PYTHON, OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [[ -n ${PYTHON:-} ]]; then PY=$PYTHON
elif [[ -x $ROOT/.venv/bin/python && ${1:-} == --prepare ]]; then PY=$ROOT/.venv/bin/python
else PY=python3; fi

CARRY_LIMIT=${GPU_CHECK_CARRY_LIMIT:-$((64 * 1024 * 1024))}
MARGIN=$((1536 * 1024))  # room for files the tree gains before the call (results, a log)
# Dependencies (pyproject.toml) missing from the device image (KINDS.md lists what it has): only constriction, which
# `vqrf.compress` imports. imageio-ffmpeg (video, 68 MB wheel) and viser (viewer; 3.6 MB + msgspec, trimesh, websockets,
# zstandard) are not needed by the CUDA tests or the benchmark, and their test modules are left out at collection.
WHEELS=("constriction==0.5.0")

# ---- --prepare: stage data and wheels here, for the carry ---------------------------------------------------------
prepare() {
    local data=${SOURCE_DATA:-${VQRF_DATA:-$ROOT/../shared/data}}
    [[ -d $data/nerf_synthetic/lego ]] || { echo "gpu_check --prepare: $data/nerf_synthetic/lego not found (set SOURCE_DATA)" >&2; exit 2; }
    mkdir -p .whl
    local spec
    for spec in "${WHEELS[@]}"; do
        local name=${spec%%==*}
        if compgen -G ".whl/${name}-${spec##*==}-*.whl" >/dev/null; then
            echo "wheel: $spec already in .whl/"
        else
            "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
                --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
        fi
    done
    ls -l .whl
    "$PY" - "$data" "$CARRY_LIMIT" "$MARGIN" <<'PY'
import json, os, shutil, subprocess, sys
from pathlib import Path

src_root, limit, margin = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
lego, dst_root = src_root / "nerf_synthetic" / "lego", Path(".gpu_data")
lpips = src_root / "lpips" / "lpips_alex_v0.1_torch_state_dict.npz"

def tree_bytes() -> int:
    """What travels besides the carried paths: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True).stdout
    return sum(os.path.getsize(p) for p in out.decode().split("\0") if p and os.path.isfile(p))

def wheels_bytes() -> int:
    return sum(p.stat().st_size for p in Path(".whl").glob("*.whl"))

def frames(split, every):
    meta = json.loads((lego / f"transforms_{split}.json").read_text())
    meta["frames"] = meta["frames"][::every]
    return meta

def image(frame):
    rel = frame["file_path"].lstrip("./")
    return rel if rel.endswith(".png") else rel + ".png"

train, test = frames("train", 1), frames("test", 8)
images = [image(f) for f in train["frames"]] + [image(f) for f in test["frames"]]
full_bytes = sum((lego / p).stat().st_size for p in images)
base = tree_bytes() + wheels_bytes() + margin
lpips_bytes = lpips.stat().st_size if lpips.is_file() else None

def stage(size, with_lpips):
    shutil.rmtree(dst_root, ignore_errors=True)
    out = dst_root / "nerf_synthetic" / "lego"
    out.mkdir(parents=True)
    for split, meta in (("train", train), ("test", test)):
        (out / f"transforms_{split}.json").write_text(json.dumps(meta, indent=1))
    if size is None:
        for p in images:
            (out / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(lego / p, out / p)
    else:
        from PIL import Image  # LANCZOS on RGBA, as vqrf's loader and the scorer resize
        for p in images:
            (out / p).parent.mkdir(parents=True, exist_ok=True)
            Image.open(lego / p).convert("RGBA").resize((size, size), Image.LANCZOS).save(out / p, optimize=True)
    if with_lpips:
        (dst_root / "lpips").mkdir()
        shutil.copyfile(lpips, dst_root / "lpips" / lpips.name)
    return sum(p.stat().st_size for p in dst_root.rglob("*") if p.is_file())

# 800x800 first (the protocol's size); LPIPS-alex weights when they fit too; else a 400x400 copy.
plans = [(None, True), (None, False), (400, True), (400, False)]
for size, with_lpips in plans:
    if with_lpips and lpips_bytes is None:
        continue
    predicted = full_bytes + (lpips_bytes if with_lpips else 0) if size is None else None
    if predicted is not None and base + predicted > limit:
        print(f"stage: 800x800{' + LPIPS weights' if with_lpips else ''} would need {(base + predicted) / 2**20:.1f} MiB "
              f"of the {limit / 2**20:.0f} MiB carry limit; trying less")
        continue
    staged = stage(size, with_lpips)
    if base + staged <= limit:
        break
    print(f"stage: {size or 800}x{size or 800} staged to {staged / 2**20:.1f} MiB does not fit; trying less")
else:
    shutil.rmtree(dst_root, ignore_errors=True)
    sys.exit("gpu_check --prepare: nothing fits in the carry limit")

manifest = {
    "source": str(src_root.resolve()),
    "resolution": f"{size or 800}x{size or 800}",
    "downscaled_copy": size is not None,
    "train_views": len(train["frames"]),
    "test_views": len(test["frames"]),
    "test_every_in_source": 8,
    "test_every": 1,
    "lpips_alex": with_lpips,
    "data_bytes": staged,
    "wheels_bytes": wheels_bytes(),
    "tree_bytes": tree_bytes(),
}
manifest["carried_total_bytes"] = manifest["data_bytes"] + manifest["wheels_bytes"] + manifest["tree_bytes"]
(dst_root / "STAGED.json").write_text(json.dumps(manifest, indent=2) + "\n")
print(json.dumps(manifest, indent=2))
if size is not None:
    print(f"NOTE: lego at 800x800 does not fit in the carry limit: staged a {size}x{size} copy (PIL LANCZOS); the GPU "
          "check's timings are then for that size, not the protocol's 800x800")
if not with_lpips:
    print("NOTE: the LPIPS-alex weights did not fit; LPIPS is recorded as not measured on the device")
print(f"total that travels: {manifest['carried_total_bytes'] / 2**20:.1f} MiB of {limit / 2**20:.0f} MiB "
      f"(data {staged / 2**20:.1f}, wheels {manifest['wheels_bytes'] / 2**20:.2f}, tree {manifest['tree_bytes'] / 2**20:.2f})")
PY
    echo 'next: device run(command="bash benchmarks/gpu_check.sh", carry=[".whl", ".gpu_data"], timeout_s=420)'
}

# ---- the check ----------------------------------------------------------------------------------------------------
now() { date +%s.%N; }
STAGES=()
FAILED=0

# stage NAME CMD...: runs CMD, prints and records its time and exit status; a failure does not stop later stages.
stage() {
    local name=$1; shift
    local t0 rc
    t0=$(now)
    echo
    echo "=== stage $name: start at $(date +%T) (script time ${SECONDS}s)"
    if "$@"; then rc=0; else rc=$?; fi
    local dt
    dt=$(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    echo "=== stage $name: ${dt} s, exit $rc"
    STAGES+=("$name $dt $rc")
    printf '%s\t%s\t%s\n' "$name" "$dt" "$rc" >>"$OUTDIR/stages.tsv"
    [[ $rc == 0 ]] || FAILED=1
    return 0
}

setup() {
    local wheels=(.whl/*.whl)
    if [[ -e ${wheels[0]} ]]; then
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            "${wheels[@]}"; then
            export PYTHONPATH=/tmp/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
            echo "installed into /tmp/site: ${wheels[*]}"
        else
            echo "WARNING: the carried wheels did not install (another Python?); relying on what is importable"
            export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
        fi
    else
        echo "no .whl/ folder: nothing to install"
        export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
    fi
    "$PY" -c "import vqrf, vqrf.compress.container, torch, numba, numpy; print('import vqrf: ok from', vqrf.__file__)"
}

info() {
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "no nvidia-smi"; fi
    "$PY" - <<'PY'
import os, platform
import numba, numpy, torch
print(f"python {platform.python_version()}  torch {torch.__version__}  cuda {torch.version.cuda}  "
      f"numpy {numpy.__version__}  numba {numba.__version__}  cpus {os.cpu_count()}  torch threads {torch.get_num_threads()}")
print(f"cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    print(f"device: {p.name}, capability {p.major}.{p.minor}, {p.multi_processor_count} SMs, "
          f"{total / 2**30:.1f} GiB ({free / 2**30:.1f} GiB free)")
PY
    if [[ $DEVICE == cuda* ]]; then
        "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'torch sees no CUDA device')"
    fi
}

cuda_tests() {
    # Collect the whole suite (modules needing packages absent here fail to import and are left out), then run only
    # the files holding CUDA-marked tests. Exit 5 of pytest (nothing collected) counts as success with a note.
    local collected rc=0
    collected=$("$PY" -m pytest --collect-only -q -m cuda -p no:cacheprovider --continue-on-collection-errors tests/ 2>&1) || rc=$?
    local files
    files=$(grep -o '^tests/[^:]*\.py::' <<<"$collected" | sed 's/::$//' | sort -u || true)
    grep -E '^(ERROR|FAILED|[0-9]+ .*(error|deselected|selected))' <<<"$collected" | tail -n 20 || true
    if [[ -z $files ]]; then
        echo "no CUDA-marked tests collected (pytest exit $rc)"
        return 0
    fi
    echo "CUDA-marked tests in: $(tr '\n' ' ' <<<"$files")"
    echo "$(grep -c '::' <<<"$collected") CUDA-marked tests collected"
    if [[ $DEVICE != cuda* ]]; then
        echo "dry run on $DEVICE: collected only, not run"
        return 0
    fi
    # shellcheck disable=SC2086
    timeout --signal=TERM --kill-after=10 "$TEST_TIMEOUT" "$PY" -m pytest -q -m cuda -p no:cacheprovider -rs \
        --junitxml="$OUTDIR/cuda_tests.xml" $files
}

lego_run() {
    local remaining=$((TOTAL_SECONDS - SECONDS - 20))
    local train_seconds=$TRAIN_SECONDS
    # Leave eval and compression at least 100 s (the GPU) of what remains.
    if (( $(awk -v r="$remaining" -v t="$train_seconds" 'BEGIN { print (r - t < 100) }') )); then
        train_seconds=$(( remaining > 160 ? remaining - 100 : 60 ))
        echo "only ${remaining}s left: training box cut to ${train_seconds}s"
    fi
    local grid=()
    [[ -n $GRID_INIT ]] && grid+=(--grid-init "$GRID_INIT")
    [[ -n $GRID_FINAL ]] && grid+=(--grid-final "$GRID_FINAL")
    echo "lego: device $DEVICE, downscale $DOWNSCALE, every $EVERY, ${train_seconds}s training box, $FINETUNE_ITERS fine-tuning steps; hard stop in ${remaining}s"
    timeout --signal=TERM --kill-after=10 "$remaining" "$PY" benchmarks/full_protocol.py \
        --scene "$VQRF_DATA/nerf_synthetic/lego" --device "$DEVICE" --preset syn --iters "$ITERS" \
        --max-train-seconds "$train_seconds" --every "$EVERY" --downscale "$DOWNSCALE" \
        --finetune-iters "$FINETUNE_ITERS" --compressions budget --target-size 1MB "${grid[@]}" \
        --name gpu_check_lego --out "$WORK" --json "$OUTDIR/gpu_check_lego.json" --fresh
}

summary() {
    "$PY" - "$OUTDIR" "$DEVICE" "$ITERS" "$VQRF_DATA" <<'PY'
import json, sys, time
from pathlib import Path

out, device, target, data = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
stages = [dict(zip(("stage", "seconds", "exit"), line.split("\t"))) for line in
          (out / "stages.tsv").read_text().splitlines() if line]
for s in stages:
    s["seconds"], s["exit"] = float(s["seconds"]), int(s["exit"])
report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "device": device, "stages": stages}
staged = data / "STAGED.json"
if staged.is_file():
    report["staged_data"] = json.loads(staged.read_text())
proto = out / "gpu_check_lego.json"
if proto.is_file():
    p = json.loads(proto.read_text())
    keys = ("complete", "device_name", "resolution", "train_views", "views", "iters", "iters_target",
            "train_seconds", "iters_per_s", "train_rays_per_s", "last_segment", "grid",
            "extrapolated_full_seconds", "extrapolated_full_seconds_naive", "extrapolation_note", "psnr", "ssim",
            "lpips_alex", "render_rays_per_s", "gpu_peak_mb", "eval_gpu_peak_mb", "gpu_max_memory_allocated_mb",
            "peak_rss_mb", "stage_seconds")
    report["lego"] = {k: p.get(k) for k in keys if k in p}
    c = p.get("compression", {}).get("budget")
    if c:
        report["lego"]["vqrf_1MB"] = {k: c.get(k) for k in ("bytes", "psnr", "ssim", "lpips_alex", "seconds",
                                                           "stage_seconds", "finetune_iters", "gpu_peak_mb",
                                                           "render_rays_per_s")}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")

print(f"{'stage':<10} {'seconds':>8}  exit")
for s in stages:
    print(f"{s['stage']:<10} {s['seconds']:>8.1f}  {s['exit']}")
lego = report.get("lego")
if not lego:
    print("lego: no result")
    sys.exit(0)
def f(v, spec):
    return "n/a" if v is None else format(v, spec)
print(f"lego on {lego.get('device_name')} at {lego.get('resolution')} ({lego.get('train_views')} train views), "
      f"complete: {lego.get('complete')}")
if "iters" in lego:
    print(f"  training: {lego['iters']} iterations in {lego['train_seconds']:.1f} s = {lego['iters_per_s']:.2f} it/s "
          f"= {lego['train_rays_per_s']:,.0f} rays/s; grid reached {'x'.join(map(str, lego['grid']))}")
    seg = lego.get("last_segment")
    if seg:
        print(f"  last segment (iterations {seg['from']}-{seg['to']}): {seg['iters_per_s']:.2f} it/s")
    if lego.get("extrapolated_full_seconds") is not None:
        print(f"  extrapolated for {target} iterations: {lego['extrapolated_full_seconds'] / 60:.1f} min "
              f"(naive, at the mean rate: {lego['extrapolated_full_seconds_naive'] / 60:.1f} min)")
if "psnr" in lego:
    print(f"  eval: {lego.get('views')} views, PSNR {lego['psnr']:.2f}, SSIM {lego['ssim']:.4f}, "
          f"LPIPS-alex {f(lego.get('lpips_alex'), '.4f')}, render {lego['render_rays_per_s']:,.0f} rays/s")
v = lego.get("vqrf_1MB")
if v:
    print(f"  1MB .vqrf: {v['bytes']:,} bytes, PSNR {v['psnr']:.2f}, {v['seconds']:.1f} s "
          f"({', '.join(f'{k} {s:.1f}' for k, s in v['stage_seconds'].items())}; {v['finetune_iters']} FT steps), "
          f"render {v['render_rays_per_s']:,.0f} rays/s")
print(f"  GPU max allocated {f(lego.get('gpu_max_memory_allocated_mb'), ',.0f')} MB, "
      f"peak RSS {f(lego.get('peak_rss_mb'), ',.0f')} MB")
print(f"summary: {out / 'gpu_check.json'}")
PY
}

check() {
    echo "gpu_check: $(date), repo $ROOT, python $PY, out $OUTDIR"
    echo "device $DEVICE, VQRF_DATA=$VQRF_DATA, total budget ${TOTAL_SECONDS}s"
    stage setup setup
    stage info info
    if [[ $DEVICE == cuda* ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "no CUDA device: stopping before the tests and the benchmark"
        FAILED=1
    else
        stage tests cuda_tests
        if [[ -d $VQRF_DATA/nerf_synthetic/lego ]]; then
            stage lego lego_run
        else
            echo "no lego under VQRF_DATA=$VQRF_DATA (run benchmarks/gpu_check.sh --prepare here and carry .gpu_data)"
            FAILED=1
        fi
    fi
    echo
    echo "=== summary (script time ${SECONDS}s)"
    summary || FAILED=1
    echo "gpu_check: done in ${SECONDS}s, $([[ $FAILED == 0 ]] && echo 'all stages passed' || echo 'SOME STAGES FAILED')"
    return $FAILED
}

if [[ ${1:-} == --prepare ]]; then
    prepare
    exit 0
elif [[ -n ${1:-} ]]; then
    echo "usage: benchmarks/gpu_check.sh [--prepare]" >&2
    exit 2
fi

DEVICE=${GPU_CHECK_DEVICE:-cuda}
if [[ $DEVICE == cuda* ]]; then dry=0; else dry=1; fi
TRAIN_SECONDS=${GPU_CHECK_TRAIN_SECONDS:-$([[ $dry == 1 ]] && echo 20 || echo 150)}
DOWNSCALE=${GPU_CHECK_DOWNSCALE:-$([[ $dry == 1 ]] && echo 16 || echo 1)}
FINETUNE_ITERS=${GPU_CHECK_FINETUNE_ITERS:-$([[ $dry == 1 ]] && echo 10 || echo 300)}
GRID_INIT=${GPU_CHECK_GRID_INIT:-$([[ $dry == 1 ]] && echo 32 || echo)}
GRID_FINAL=${GPU_CHECK_GRID_FINAL:-$([[ $dry == 1 ]] && echo 48 || echo)}
TOTAL_SECONDS=${GPU_CHECK_TOTAL_SECONDS:-$([[ $dry == 1 ]] && echo 600 || echo 360)}
ITERS=${GPU_CHECK_ITERS:-30000}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT:-150}
export VQRF_DATA=${VQRF_DATA:-$ROOT/.gpu_data}
VQRF_DATA=$(cd "$VQRF_DATA" 2>/dev/null && pwd || echo "$VQRF_DATA")
if [[ -n ${GPU_CHECK_EVERY:-} ]]; then EVERY=$GPU_CHECK_EVERY
elif [[ -f $VQRF_DATA/STAGED.json ]]; then EVERY=1  # the staged test split holds every 8th view already
else EVERY=8; fi
OUTDIR=${OUT:-/tmp/gpu_check_out}
WORK=${GPU_CHECK_WORK:-/tmp/gpu_check_work}
mkdir -p "$OUTDIR"
rm -f "$OUTDIR/stages.tsv"
set +e
check 2>&1 | tee "$OUTDIR/gpu_check.log"
status=${PIPESTATUS[0]}
exit "$status"
