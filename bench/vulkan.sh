#!/usr/bin/env bash
# The Vulkan backend on a machine without a GPU: Mesa's lavapipe (llvmpipe) Vulkan driver runs the
# device kernels on the CPU. Proves the device path (every layer offloaded, logits copied back to
# the host) keeps greedy speculation lossless; its speed means nothing.
#
# Debian 12 (root): its libvulkan-dev (1.3.239) lacks VK_EXT_layer_settings, which ggml-vulkan
# uses at this llama.cpp pin (ggml/src/ggml-vulkan/ggml-vulkan.cpp:5214), so newer headers are
# unpacked from Debian 13's packages into $VK_HEADERS (headers only: the loader and driver stay
# Debian 12's). ggml-vulkan skips CPU-type devices unless GGML_VK_VISIBLE_DEVICES names one.
#
# Usage: bench/vulkan.sh            (builds in this tree with its own llama.cpp cache entry;
#                                    ~34 min cold on 2 shared cores, seconds once cached)
set -euo pipefail
cd "$(dirname "$0")/.."
VK_HEADERS="${VK_HEADERS:-/opt/vulkan-1.4}"

if [ ! -d "$VK_HEADERS/usr/include/vulkan" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan-dev glslc \
        spirv-headers >/dev/null
    # Debian 13 from the archive this system already uses (its first deb822 entry).
    archive="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
    echo "deb $archive trixie main" > /etc/apt/sources.list.d/spec-trixie.list
    trap 'rm -f /etc/apt/sources.list.d/spec-trixie.list; apt-get update -qq' EXIT
    apt-get update -qq
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -t trixie libvulkan-dev spirv-headers)
    mkdir -p "$VK_HEADERS"
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$VK_HEADERS"; done
fi

export CMAKE_ARGS="-DGGML_VULKAN=on -DVulkan_INCLUDE_DIR=$VK_HEADERS/usr/include -DSPIRV-Headers_DIR=$VK_HEADERS/usr/share/cmake/SPIRV-Headers"
export GGML_VK_VISIBLE_DEVICES="${GGML_VK_VISIBLE_DEVICES:-0}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the in-place build, for the scripts too
start=$SECONDS
python setup.py -q build_ext --inplace
echo "vulkan.sh: build took $((SECONDS - start)) s"
python -m spec info | tee /dev/stderr | grep -q "^device: *Vulkan" \
    || { echo "vulkan.sh: no Vulkan device found" >&2; exit 1; }
python -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py
python bench/gpu_check.py --n-gpu-layers -1 --prompts 1 --max-tokens 32 --max-rows 8
