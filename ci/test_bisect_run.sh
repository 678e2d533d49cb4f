#!/usr/bin/env bash
# ci/test_bisect_run.sh — proves that `git bisect run ci/bisect-run.sh` lands on a planted
# precision regression.
#
# Builds a throw-away git history in a temporary folder from this checkout's tracked files:
#   c1 base (good)
#   c2 a build break (bisect-run must answer 125: skip)
#   c3 the break fixed (good)
#   c4 PLANTED REGRESSION: ref's RMSNorm eps multiplied by 1000 (a one-line change in ref/model.c)
#   c5, c6 unrelated changes (bad, as everything after c4)
# then checks bisect-run.sh's verdict on c1 (0), c2 (125) and c6 (1), runs
# `git bisect run ci/bisect-run.sh --impl ref --max 1e-5` over c1..c6 and requires c4.
# The build folder lives outside the temporary repository and is shared by every step, so each
# step recompiles only the files the checkout changed; it is seeded from SEED_BUILD (default
# build, the folder `make check` just built) when that was a CUDA=0 build, saving the first
# full build. Usage: ci/test_bisect_run.sh [SEED_BUILD]. Exit 0 pass, 1 fail.
set -u
cd "$(dirname "$0")/.."
src=$(pwd)
seed=${1:-build}
tmp=$(mktemp -d /tmp/q3n_bisect_test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
repo=$tmp/repo
bdir=$tmp/build
fail() {
    echo "test_bisect_run: FAIL: $*"
    exit 1
}
t0=$(date +%s)

mkdir -p "$repo"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -z | (cd "$src" && xargs -0 cp --parents -t "$repo") || fail "cannot copy the tracked files"
else # a source tarball: everything but build outputs and local environments
    tar --exclude=./build --exclude=./golden/.venv --exclude=./.git -cf - . | tar -xf - -C "$repo" ||
        fail "cannot copy the source tree"
fi
cp "$src/ci/bisect-run.sh" "$repo/ci/bisect-run.sh" # the version under test, tracked or not
cd "$repo" || fail "no repo"
git init -q . && git config user.name q3n-test && git config user.email q3n-test@localhost &&
    git config commit.gpgsign false || fail "git init"
commit() { git add -A && git commit -q -m "$1" && git rev-parse HEAD; }
c1=$(commit "c1 base")

# seed the shared build folder (objects copied now are newer than every source of c1)
if [ -d "$src/$seed/obj" ] && [ ! -e "$src/$seed/libq3n_cuda.a" ]; then
    mkdir -p "$bdir" && cp -r "$src/$seed/obj" "$bdir/obj"
    echo "test_bisect_run: build folder seeded from $seed"
fi
sleep 1 # later edits get a strictly newer mtime than the seeded objects

echo "#error planted build break" >harness/zz_planted_break.c
c2=$(commit "c2 build break")
rm harness/zz_planted_break.c
c3=$(commit "c3 fix the build")
grep -q 'c->rms_norm_eps)' ref/model.c || fail "ref/model.c has no 'c->rms_norm_eps)' to plant the regression in"
sed -i '0,/c->rms_norm_eps)/s//c->rms_norm_eps * 1000.0)/' ref/model.c
grep -q 'rms_norm_eps \* 1000.0' ref/model.c || fail "the planted change did not apply"
c4=$(commit "c4 innocent-looking refactor (planted precision regression)")
echo "bisect test" >>README.md
c5=$(commit "c5 docs")
echo "# bisect test" >>ci/run-tests.sh
c6=$(commit "c6 ci")

run=(./ci/bisect-run.sh --golden golden/data/tiny_f32.h5 --impl ref --metric rel_l2 --max 1e-5 --build-dir "$bdir")
git checkout -q "$c1" && "${run[@]}"
rc=$?
[ $rc -eq 0 ] || fail "bisect-run on c1 (good) exited $rc"
git checkout -q "$c2" && "${run[@]}" 2>/dev/null
rc=$?
[ $rc -eq 125 ] || fail "bisect-run on c2 (build break) exited $rc, want 125"
git checkout -q "$c6" && "${run[@]}"
rc=$?
[ $rc -eq 1 ] || fail "bisect-run on c6 (bad) exited $rc"

git bisect start "$c6" "$c1" >/dev/null || fail "git bisect start"
out=$(git bisect run "${run[@]}" 2>&1)
echo "$out" | grep -E "bisect-run|first bad commit|rror"
found=$(echo "$out" | sed -n 's/^\([0-9a-f]\{40\}\) is the first bad commit.*/\1/p')
git bisect reset -q >/dev/null 2>&1
[ "$found" = "$c4" ] || fail "git bisect landed on '${found:-nothing}', want c4 $c4"
echo "test_bisect_run: PASS: git bisect run landed on the planted regression c4 ($(($(date +%s) - t0)) s)"
