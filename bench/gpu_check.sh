#!/usr/bin/env bash
# GPU check (issue 18): one command, one table. See bench/gpu_check.py's docstring for the rows.
#
#   bash bench/gpu_check.sh [--out DIR] [--rows a,b] [--peak-tflops X]   one GPU, under 8 minutes
#   bash bench/gpu_check.sh --smoke [--out DIR]                          CPU, tiny model (also GPU_CHECK_SMOKE=1)
#   bash bench/gpu_check.sh --pack DIR                                   on a machine with network: fill DIR with
#                                                                         the wheels a machine without one needs
#
# Ray and DeepSpeed may travel as wheels. GPU_CHECK_WHEELS (default: wheels, relative to the repo root;
# a colon-separated list of folders) is copied into GPU_CHECK_SITE.incoming, which persists between
# calls; each wheel there whose distribution is not installed yet is installed with pip --no-index
# --no-deps into GPU_CHECK_SITE (default /tmp/dpo_ray_gpu_check_site), put first on PYTHONPATH (Ray's
# workers inherit it). A wheel larger than one call may carry (ray: 75.6 MiB) travels as NAME.whl.part-aa,
# -ab, ... plus NAME.whl.sha256 (what --pack writes), possibly over several calls: each part in an
# ignored folder named in the call's carry (wheels-1/, wheels-2/; a warm machine keeps the earlier
# one), GPU_CHECK_WHEELS=wheels-1:wheels-2. Parts are joined once their sha256 matches.
set -euo pipefail
cd "$(dirname "$0")/.."

PART_BYTES=$((60 * 1024 * 1024))  # parts stay under the device call's 64 MiB upload limit

pack() {  # pack DIR: ray for GPU_CHECK_PYTHON (default 3.12), a deepspeed wheel built here, their small deps
    local dir=$1 py=${GPU_CHECK_PYTHON:-3.12}
    mkdir -p "$dir"
    local binary=(--no-deps --only-binary=:all: --python-version "$py" --platform manylinux2014_x86_64 -d "$dir")
    python -m pip download ray==2.60.0 "${binary[@]}"
    # deepspeed ships an sdist; with DS_BUILD_OPS=0 it builds to a pure-Python wheel (ops JIT-build where used)
    DS_BUILD_OPS=0 python -m pip wheel deepspeed==0.19.8 --no-deps --no-build-isolation -w "$dir"
    python -m pip download hjson py-cpuinfo msgpack ninja einops pydantic pydantic-core annotated-types \
        typing-inspection click jsonschema jsonschema-specifications referencing rpds-py attrs protobuf fsspec "${binary[@]}"
    for whl in "$dir"/*.whl; do
        if [ "$(stat -c %s "$whl")" -gt "$PART_BYTES" ]; then
            (cd "$dir" && sha256sum "$(basename "$whl")" > "$(basename "$whl").sha256")
            split -b "$PART_BYTES" "$whl" "$whl.part-" && rm "$whl"
        fi
    done
    sizes "$dir"
}

sizes() {  # every file in DIR with its size, and whether it fits one 64 MiB call
    local total=0 bytes
    for f in "$1"/*; do
        bytes=$(stat -c %s "$f"); total=$((total + bytes))
        awk -v b="$bytes" -v f="$(basename "$f")" 'BEGIN { printf "gpu_check: %8.1f MiB  %s%s\n", b / 1048576, f,
            (b > 64 * 1048576 ? "  (over 64 MiB: split it)" : "") }'
    done
    awk -v b="$total" 'BEGIN { printf "gpu_check: %8.1f MiB  in all\n", b / 1048576 }'
}

install_wheels() {  # install_wheels DIRS SITE: DIRS colon-separated
    local list=$1 site=$2 dir whl name sum dirs
    local staged="$site.incoming"
    mkdir -p "$staged"
    IFS=: read -ra dirs <<< "$list"
    for dir in "${dirs[@]}"; do
        [ -d "$dir" ] && sizes "$dir" >&2 && cp -n "$dir"/* "$staged"/ 2>/dev/null || true
    done
    for sum in "$staged"/*.whl.sha256; do
        [ -e "$sum" ] || continue
        whl=${sum%.sha256}
        [ -e "$whl" ] && continue
        cat "$whl".part-* > "$whl.joining" 2>/dev/null || true
        if [ "$(sha256sum < "$whl.joining" | cut -d' ' -f1)" = "$(cut -d' ' -f1 "$sum")" ]; then
            mv "$whl.joining" "$whl"
        else
            rm -f "$whl.joining"
            echo "gpu_check: $(basename "$whl"): parts incomplete ($(ls "$whl".part-* 2>/dev/null | wc -l) here); not installed yet" >&2
        fi
    done
    dir=$staged
    for whl in "$dir"/*.whl; do
        [ -e "$whl" ] || continue
        name=$(basename "$whl" | cut -d- -f1)
        if PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}" python -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$name" 2>/dev/null; then
            continue  # installed already (system, or an earlier call into $site)
        fi
        python -m pip install --no-index --no-deps --quiet --target "$site" "$whl" >&2
        echo "gpu_check: installed $(basename "$whl") into $site" >&2
    done
}

if [ "${1:-}" = "--pack" ]; then
    pack "${2:?usage: bash bench/gpu_check.sh --pack DIR}"
    exit 0
fi

WHEELS=${GPU_CHECK_WHEELS:-wheels}
SITE=${GPU_CHECK_SITE:-/tmp/dpo_ray_gpu_check_site}
IFS=: read -ra wheel_dirs <<< "$WHEELS"
for dir in "${wheel_dirs[@]}" "$SITE.incoming"; do
    if [ -d "$dir" ]; then
        install_wheels "$WHEELS" "$SITE"
        break
    fi
done
if [ -d "$SITE" ]; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi

smoke=${GPU_CHECK_SMOKE:-0}
for arg in "$@"; do
    [ "$arg" = "--smoke" ] && smoke=1
done
if [ "$smoke" = 1 ]; then
    export DS_ACCELERATOR=cpu  # before DeepSpeed's first get_accelerator(); gloo
    exec python bench/gpu_check.py --smoke "$@"
fi
# The whole check stays under 8 minutes; each isolated row has its own limit (--row-timeout).
exec timeout 480 python bench/gpu_check.py "$@"
