/* test_moe_pack.c — the packed expert layout (moe_pack.h) is what its comment says: walking the
 * tiles in address order, described from the v5 work item's side (item xb, k-tile kt, tile row
 * rr, k within the tile), must visit offsets 0, 1, 2, ... — which also proves the map is a
 * bijection onto [0, N * Kin). Host-only: the GPU kernels that use the same functions are checked
 * against this layout by fast/cuda/dev/test_moe_prefill (case_pack) and test_packed. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include "moe_pack.h"

/* W's row for row rr of item xb's tiles, written from the item's point of view. */
static int item_row(int xb, int rr, int N, int swiglu)
{
    if (!swiglu) return 256 * xb + rr;
    return rr < 128 ? 128 * xb + rr : N / 2 + 128 * xb + (rr - 128);
}

/* Returns the number of (n, k) whose offset differed from the walk's position (0 expected). */
static long long walk_mismatches(int N, int Kin, int swiglu)
{
    const int items = swiglu ? (N / 2) / 128 : N / 256, ktiles = Kin / 64;
    long long at = 0, bad = 0;
    for (int xb = 0; xb < items; xb++)
        for (int kt = 0; kt < ktiles; kt++)
            for (int rr = 0; rr < 256; rr++)
                for (int kk = 0; kk < 64; kk++, at++)
                    if (q3n_pack_offset(item_row(xb, rr, N, swiglu), 64 * kt + kk, N, Kin, swiglu) != at) bad++;
    assert_int_equal(at, (long long)N * Kin);
    return bad;
}

static void test_layout_walk(void **state)
{
    (void)state;
    /* the real 80B-A3B gate_up [2I = 1024][D = 2048] and down [D = 2048][I = 512], and small ones */
    static const int shapes[][3] = {{1024, 2048, 1}, {2048, 512, 0}, {256, 64, 1}, {256, 64, 0},
                                    {768, 192, 0},   {512, 128, 1},  {1536, 320, 1}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        const int N = shapes[i][0], Kin = shapes[i][1], sw = shapes[i][2];
        assert_true(q3n_pack_fits(N, Kin, sw));
        assert_int_equal(walk_mismatches(N, Kin, sw), 0);
    }
}

/* A row's 64-k runs are contiguous and the next k-tile of it is one tile (256 x 64) further: the
 * decode GEMV reads row base + k offset for chunks of 8 k. */
static void test_row_addressing(void **state)
{
    (void)state;
    const int N = 2048, Kin = 512;
    for (int n = 0; n < N; n += 37)
        for (int k = 0; k < Kin; k += 8) {
            const int64_t o = q3n_pack_offset(n, k, N, Kin, 0);
            assert_true(o == q3n_pack_row_base(n, N, Kin / 64, 0) + q3n_pack_k_offset(k));
            if (k % 64) assert_true(o == q3n_pack_offset(n, k - 8, N, Kin, 0) + 8);
            else if (k) assert_true(o == q3n_pack_offset(n, k - 64, N, Kin, 0) + 256 * 64);
            if (n % 256 != 255) assert_true(q3n_pack_offset(n + 1, k, N, Kin, 0) == o + 64);
        }
    /* SwiGLU: gate row i and up row N / 2 + i share their item and sit 128 tile rows apart */
    for (int i = 0; i < 512; i += 13)
        assert_true(q3n_pack_offset(512 + i, 0, 1024, 2048, 1) == q3n_pack_offset(i, 0, 1024, 2048, 1) + 128 * 64);
}

static void test_fits(void **state)
{
    (void)state;
    assert_true(q3n_pack_fits(1024, 2048, 1));
    assert_true(q3n_pack_fits(2048, 512, 0));
    assert_true(q3n_pack_fits(256, 64, 1)); /* one item of 128 h columns */
    assert_false(q3n_pack_fits(128, 64, 0));  /* fewer than 256 rows */
    assert_false(q3n_pack_fits(384, 64, 1));  /* 192 h columns: not whole items */
    assert_false(q3n_pack_fits(512, 96, 0));  /* k not whole tiles */
    assert_false(q3n_pack_fits(257, 64, 1));  /* odd SwiGLU width */
    assert_false(q3n_pack_fits(0, 64, 0));
    assert_false(q3n_pack_fits(256, 0, 0));
    assert_false(q3n_pack_fits((int64_t)1 << 20, (int64_t)1 << 12, 0)); /* N * Kin past int32 */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layout_walk),
        cmocka_unit_test(test_row_addressing),
        cmocka_unit_test(test_fits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
