#!/usr/bin/env bash
# GPU check: build llama-cpp-python with CUDA for the card present, then serve the
# embedded model from a worker pinned to that GPU and from one on CPU, and print
# the worker's NVML readings and aggregate tok/s at 1/2/4/8/16 requests at once.
#
#   bench/gpu_check.sh [--skip-build] [--cpu-only] [--quick] [--gpu N]
#                      [--wheel PATH] [--into-venv] [--no-build-isolation]
#                      [--model GGUF] [--threads N] [--timeout S]
#
#   --skip-build          use the CUDA build made by an earlier run (or the venv's)
#   --cpu-only            no GPU: no build, the CPU side alone (machines without one)
#   --quick               1 and 2 requests at once, 16 tokens each
#   --gpu N               the GPU to check (default 0)
#   --wheel PATH          install this wheel or sdist instead of fetching
#                         llama-cpp-python==<the venv's version> from pip's index
#   --into-venv           install the CUDA build into the project's venv, replacing
#                         its llama-cpp-python (default: a separate site folder,
#                         ~/.cache/llmo/gpu-check/, put first on PYTHONPATH)
#   --no-build-isolation  build with the venv's scikit-build-core and cmake (no index)
#   --model GGUF          serve this model file (default: the embedded Gemma 3 270M)
#   --threads N           llama.cpp threads of the workers (default: llama.cpp's own)
#   --timeout S           hard limit on the whole run (default 570 s)
#
# Needs: nvidia-smi (driver), nvcc (CUDA toolkit), a C++ compiler and cmake, and
# pip's index for the sdist and its build tools unless --wheel and
# --no-build-isolation say otherwise. Nothing else is downloaded. Exit 0: checked;
# 1: the build or a measurement failed, or the model was not offloaded; 2: a
# prerequisite is missing (the message says which); 124: past --timeout.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${LLMO_PYTHON:-$ROOT/.venv/bin/python}
ARGS=("$@")

say() { printf 'gpu_check: %s\n' "$*" >&2; }
missing() {
    say "$*"
    exit 2
}
failed() {
    say "$*"
    exit 1
}
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

skip_build=0 cpu_only=0 quick=0 into_venv=0 isolation=1
wheel="" model="" gpu=0 threads=0 limit=570
while (($#)); do
    option=$1
    case $option in
    --wheel | --gpu | --model | --threads | --timeout)
        (($# >= 2)) || missing "$option needs a value (see --help)"
        value=$2
        shift
        ;;
    esac
    case $option in
    --skip-build) skip_build=1 ;;
    --cpu-only) cpu_only=1 ;;
    --quick) quick=1 ;;
    --into-venv) into_venv=1 ;;
    --no-build-isolation) isolation=0 ;;
    --wheel) wheel=$value ;;
    --gpu) gpu=$value ;;
    --model) model=$value ;;
    --threads) threads=$value ;;
    --timeout) limit=$value ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) missing "unknown option $option (see --help)" ;;
    esac
    shift
done
[[ $gpu =~ ^[0-9]+$ ]] || missing "--gpu takes a GPU index like 0, not '$gpu'"
[[ $threads =~ ^[0-9]+$ ]] || missing "--threads takes a number, not '$threads'"
[[ $limit =~ ^[0-9]+$ ]] || missing "--timeout takes whole seconds, not '$limit'"

# The hard limit: the whole run again under timeout(1), which stops this script,
# the helper and the workers (one process group) when it runs out.
if [[ -z ${GPU_CHECK_UNDER_TIMEOUT:-} ]]; then
    export GPU_CHECK_UNDER_TIMEOUT=1
    rc=0
    timeout --kill-after=15 "$limit" bash "${BASH_SOURCE[0]}" "${ARGS[@]}" || rc=$?
    if ((rc == 124 || rc == 137)); then
        say "stopped: the run took longer than --timeout $limit s"
    fi
    exit "$rc"
fi

[[ -x $PY ]] || missing "no Python at $PY: create the project's venv (see README.md) or set LLMO_PYTHON"
version=$("$PY" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null) ||
    missing "llama-cpp-python is not installed in $PY's environment: pip install -e '.[test]' first"

helper=(--gpu "$gpu" --threads "$threads")
((quick)) && helper+=(--quick)
if [[ -n $model ]]; then
    [[ -f $model ]] || missing "--model $model: no such file"
    helper+=(--model "$model")
fi
if ((cpu_only)); then
    echo "CPU only: no build, no GPU side"
    exec "$PY" "$ROOT/bench/gpu_check.py" --cpu-only "${helper[@]}"
fi

# --- the card ----------------------------------------------------------------------------
command -v nvidia-smi >/dev/null ||
    missing "nvidia-smi not found: this machine has no NVIDIA driver; run with --cpu-only for the CPU figures alone"
if ! cap=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader -i "$gpu" 2>&1); then
    missing "nvidia-smi failed for GPU $gpu: $cap (run with --cpu-only for the CPU figures alone)"
fi
cap=$(head -n 1 <<<"$cap")
arch=${cap//[. ]/}
[[ $arch =~ ^[0-9]+$ ]] ||
    missing "cannot read GPU $gpu's compute capability from nvidia-smi (got '$cap'; a driver older than 510 does not report it)"
card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader -i "$gpu")
echo "GPU $gpu: $card; compute capability $cap (CUDA architecture $arch)"

cuda_home=${CUDA_HOME:-/usr/local/cuda}
if [[ -d $cuda_home/lib64 ]]; then
    export LD_LIBRARY_PATH=$cuda_home/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
site=""
if ((!into_venv)); then
    site=${XDG_CACHE_HOME:-$HOME/.cache}/llmo/gpu-check/llama-cpp-python-$version-cuda-sm$arch
fi

# --- the build ---------------------------------------------------------------------------
if ((!skip_build)); then
    nvcc=$(command -v nvcc || true)
    [[ -n $nvcc || ! -x $cuda_home/bin/nvcc ]] || nvcc=$cuda_home/bin/nvcc
    [[ -n $nvcc ]] ||
        missing "nvcc not found (on PATH or in $cuda_home/bin): install the CUDA toolkit, or set CUDA_HOME"
    command -v c++ >/dev/null || command -v g++ >/dev/null ||
        missing "no C++ compiler (c++ or g++): install build-essential or the like"
    ((isolation)) || command -v cmake >/dev/null ||
        missing "--no-build-isolation needs cmake on PATH"
    source=llama-cpp-python==$version
    pip_args=(--no-deps --force-reinstall --no-cache-dir)
    if [[ -n $wheel ]]; then
        [[ -f $wheel ]] || missing "--wheel $wheel: no such file"
        source=$(cd "$(dirname "$wheel")" && pwd)/$(basename "$wheel")
    fi
    [[ $source == *.whl ]] || pip_args+=(--no-binary llama-cpp-python)
    ((isolation)) || pip_args+=(--no-build-isolation)
    if [[ -n $site ]]; then
        rm -rf "$site"
        mkdir -p "$site"
        pip_args+=(--target "$site")
        log=$site.build.log
    else
        log=$ROOT/.venv/gpu-check-build.log
    fi
    echo "building $source for sm_$arch with $("$nvcc" --version | tail -n 1), $(nproc) jobs" \
        "(log: $log)"
    started=$SECONDS
    if ! CUDACXX=$nvcc CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$arch" \
        CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        "$PY" -m pip install "${pip_args[@]}" "$source" >"$log" 2>&1; then
        tail -n 40 "$log" >&2
        failed "the build failed after $((SECONDS - started)) s (full log: $log)"
    fi
    echo "built in $((SECONDS - started)) s"
fi

# --- the build in use: it must offload ----------------------------------------------------
if [[ -n $site && -d $site/llama_cpp ]]; then
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
fi
probe='import llama_cpp, sys; print(llama_cpp.__file__); sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 3)'
if ! where=$("$PY" -c "$probe" 2>&1); then
    failed "the llama-cpp-python in use cannot offload to a GPU ($where); run without --skip-build to build it with CUDA"
fi
echo "llama-cpp-python $version with GPU offload: $where"

exec "$PY" "$ROOT/bench/gpu_check.py" "${helper[@]}"
