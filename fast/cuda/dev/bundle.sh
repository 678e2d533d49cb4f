#!/bin/bash
# fast/cuda/dev/bundle.sh — builds the CUDA binaries here and packs what a GPU machine needs to run
# fast/cuda/dev/run_all.sh, within the device tool's 64 MiB carry limit:
#   .cudadev/bin.tar.xz   q3n and every fast/cuda/dev program, stripped (~5 MB)
#   .cudadev/libs.tar.xz  the shared libraries they link that the GPU image lacks (HDF5, OpenBLAS,
#                         cJSON and their own dependencies; ~12 MB); glibc, libstdc++ and the
#                         CUDA runtime/cuBLAS come from the image
#   .cudadev/base.tar.xz  (with BASE=REV) base/bench_model built from commit REV, for run_all.sh's ab and
#                         basebench stages (~2 MB a binary; the bare binaries would pass the carry limit)
# Usage: bash fast/cuda/dev/bundle.sh [BUILD=build/cudadev] [BASE=REV]; then carry
# [".cudadev/bin.tar.xz", ".cudadev/libs.tar.xz"] (plus ".cudadev/base.tar.xz" and ".whl" when used).
# Kernel versions that are not the default are built as the default with EXTRA_NVCCFLAGS in a
# build folder of their own (make does not track flags), e.g. (session 10: the DeltaNet prep's v2
# and grouped v5's early release)
#   EXTRA_NVCCFLAGS="-DPREP_DEFAULT_VER=2 -DG5_EARLY_RELEASE=1" bash fast/cuda/dev/bundle.sh BUILD=build/cudadev-x BASE=REV
set -eu
for a in "$@"; do case $a in BUILD=*) BUILD=${a#BUILD=} ;; BASE=*) BASE=${a#BASE=} ;; *) echo "bundle.sh: unknown argument $a" >&2; exit 2 ;; esac; done
BUILD=${BUILD:-build/cudadev}
top=$(git rev-parse --show-toplevel)
cd "$top"
make BUILD="$BUILD" -j"$(nproc)" cuda-dev "$BUILD/q3n" >/dev/null
rm -rf .cudadev/bin .cudadev/bin.tar.xz
mkdir -p .cudadev/bin
cp "$BUILD/q3n" .cudadev/bin/
for src in fast/cuda/dev/*.cu; do cp "$BUILD/cuda-dev/$(basename "$src" .cu)" .cudadev/bin/; done
strip .cudadev/bin/*
tar -C .cudadev -cJf .cudadev/bin.tar.xz bin
# Every library the binaries resolve here, less the ones the image has: match whole file names
# (a bare pattern such as "libc.so" would also drop libcjson.so).
libs=$(ldd .cudadev/bin/* 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u |
       grep -v -E '/(libc|libm|libdl|libpthread|librt|libresolv|libgcc_s|libstdc\+\+)\.so|/libcu(da|dart|blas|blasLt)\.so|/usr/local/cuda')
tar -chJf .cudadev/libs.tar.xz --transform 's|.*/||' $libs 2>/dev/null
for need in libhdf5_serial libopenblas libcjson; do
    tar -tJf .cudadev/libs.tar.xz | grep -q "^$need" || { echo "bundle.sh: $need missing from libs.tar.xz" >&2; exit 1; }
done
if [ -n "${BASE:-}" ]; then
    wt=$(mktemp -d)
    git worktree add -q "$wt" "$BASE"
    # the base as it was committed: without this run's EXTRA_NVCCFLAGS
    (cd "$wt" && env -u EXTRA_NVCCFLAGS make BUILD=build/base -j"$(nproc)" build/base/cuda-dev/bench_model >/dev/null)
    mkdir -p .cudadev/base
    cp "$wt/build/base/cuda-dev/bench_model" .cudadev/base/ && strip .cudadev/base/bench_model
    git worktree remove --force "$wt"
fi
# every base/bench_model* (BASE= above, or copied there by hand), compressed: carried as base.tar.xz
# xz -9: a 64 MiB dictionary, so that the binaries (~15 MB each, mostly alike) are stored once
[ -d .cudadev/base ] && XZ_OPT=-9 tar -C .cudadev -cJf .cudadev/base.tar.xz base
du -sh .cudadev/bin.tar.xz .cudadev/libs.tar.xz ${BASE:+.cudadev/base.tar.xz}
