/* test_safetensors.c — the safetensors reader against a file written by the reference
 * library (harness/testdata/st/python.safetensors, make_st.py), q3n's dtype conversions
 * against torch's, the writer round trip, and refusal of malformed files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "safetensors.h"
#include "testkit.h"

#define PY_ST "harness/testdata/st/python.safetensors"

static const struct q3n_st_tensor *must_find(const struct q3n_safetensors *st, const char *name)
{
    const struct q3n_st_tensor *t = q3n_safetensors_find(st, name);
    if (!t) fail_msg("tensor %s not found", name);
    return t;
}

/* Converts a tensor with q3n_safetensors_to_f32 into a fresh buffer. */
static float *to_f32(const struct q3n_safetensors *st, const char *name, int64_t *n)
{
    const struct q3n_st_tensor *t = must_find(st, name);
    struct q3n_error err = {0};
    float *x = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *x);
    assert_non_null(x);
    if (q3n_safetensors_to_f32(st, t, x, &err) != Q3N_OK) fail_msg("%s: %s", name, err.msg);
    *n = t->numel;
    return x;
}

/* Bitwise equality (so -0.0, inf and NaN patterns count). */
static void assert_bits_equal(const char *name, const float *a, const float *b, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&a[i], &b[i], sizeof *a) != 0)
            fail_msg("%s[%lld]: %.9g vs %.9g", name, (long long)i, (double)a[i], (double)b[i]);
}

static void test_a_file_from_the_reference_library_converts_like_torch(void **state)
{
    (void)state;
    struct q3n_safetensors *st = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_safetensors_open(&st, PY_ST, &err), Q3N_OK);
    assert_int_equal(q3n_safetensors_count(st), 14);
    assert_int_equal(q3n_safetensors_shard_count(st), 1);
    assert_string_equal(q3n_safetensors_shard_path(st, 0), PY_ST);
    const struct q3n_st_tensor *t = must_find(st, "f32");
    assert_int_equal(t->dtype, Q3N_ST_F32);
    assert_int_equal(t->rank, 2);
    assert_int_equal(t->dims[0], 3);
    assert_int_equal(t->dims[1], 5);
    assert_int_equal(t->nbytes, 60);
    assert_null(q3n_safetensors_find(st, "nope"));
    const char *pairs[][2] = {{"bf16", "bf16_as_f32"}, {"f16", "f16_as_f32"}, {"f64_exact", "f64_exact_as_f32"}};
    for (int i = 0; i < 3; i++) {
        int64_t n1, n2;
        float *got = to_f32(st, pairs[i][0], &n1), *want = to_f32(st, pairs[i][1], &n2);
        assert_int_equal(n1, n2);
        assert_bits_equal(pairs[i][0], got, want, n1);
        free(got);
        free(want);
    }
    /* q3n's float32 -> bf16/f16 rounding (the checkpoint writer's) matches torch's */
    int64_t n, nb, nh;
    float *src = to_f32(st, "round_src", &n), *bf = to_f32(st, "round_bf16", &nb), *hf = to_f32(st, "round_f16", &nh);
    assert_int_equal(n, nb);
    for (int64_t i = 0; i < n; i++) {
        float mine = q3n_bf16_to_f32(q3n_f32_to_bf16(src[i]));
        if (memcmp(&mine, &bf[i], 4) != 0)
            fail_msg("bf16 rounding of %.9g: q3n %.9g, torch %.9g", (double)src[i], (double)mine, (double)bf[i]);
    }
    /* and the writer's float32 -> f16 rounding matches torch's too */
    char dir[] = "/tmp/q3n_test_st_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/h.safetensors", dir);
    struct q3n_st_write_tensor w = {.name = "h", .dtype = Q3N_ST_F16, .rank = 1, .dims = {n}, .data = src};
    assert_int_equal(q3n_safetensors_write(path, &w, 1, &err), Q3N_OK);
    struct q3n_safetensors *hst = NULL;
    assert_int_equal(q3n_safetensors_open(&hst, path, &err), Q3N_OK);
    int64_t nw;
    float *mine16 = to_f32(hst, "h", &nw);
    assert_int_equal(nw, nh);
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&mine16[i], &hf[i], 4) != 0)
            fail_msg("f16 rounding of %.9g: q3n %.9g, torch %.9g", (double)src[i], (double)mine16[i], (double)hf[i]);
    free(mine16);
    q3n_safetensors_close(hst);
    unlink(path);
    rmdir(dir);
    free(src);
    free(bf);
    free(hf);
    int64_t ne;
    float *empty = to_f32(st, "empty", &ne);
    assert_int_equal(ne, 0);
    free(empty);
    q3n_safetensors_close(st);
}

static void test_inexact_f64_fp8_and_integer_tensors_are_refused_on_use(void **state)
{
    (void)state;
    struct q3n_safetensors *st = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_safetensors_open(&st, PY_ST, &err), Q3N_OK);
    float out[16];
    assert_int_equal(q3n_safetensors_to_f32(st, must_find(st, "f64_inexact"), out, &err), Q3N_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "f64_inexact"));
    assert_non_null(strstr(err.msg, "index 1"));
    assert_non_null(strstr(err.msg, PY_ST));
    assert_int_equal(q3n_safetensors_to_f32(st, must_find(st, "fp8"), out, &err), Q3N_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "FP8 (F8_E4M3)"));
    assert_int_equal(q3n_safetensors_to_f32(st, must_find(st, "i64"), out, &err), Q3N_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "tensor i64: dtype I64"));
    q3n_safetensors_close(st);
}

static void test_the_writer_round_trips_every_stored_dtype(void **state)
{
    (void)state;
    char dir[] = "/tmp/q3n_test_st_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/w.safetensors", dir);
    float a[6] = {1.0f, -2.5f, 0.1f, 3e38f, -0.0f, 1e-20f}, b[3] = {1.0f, 0.5f, -65504.0f};
    float big[5000];
    for (int i = 0; i < 5000; i++) big[i] = (float)i * 0.37f - 900.0f;
    struct q3n_st_write_tensor w[4] = {
        {.name = "model.a", .dtype = Q3N_ST_F32, .rank = 2, .dims = {2, 3}, .data = a},
        {.name = "model.b", .dtype = Q3N_ST_F16, .rank = 1, .dims = {3}, .data = b},
        {.name = "model.big", .dtype = Q3N_ST_BF16, .rank = 3, .dims = {10, 25, 20}, .data = big},
        {.name = "scalar", .dtype = Q3N_ST_F32, .rank = 0, .data = a},
    };
    struct q3n_error err = {0};
    assert_int_equal(q3n_safetensors_write(path, w, 4, &err), Q3N_OK);
    struct q3n_safetensors *st = NULL;
    assert_int_equal(q3n_safetensors_open(&st, path, &err), Q3N_OK);
    assert_int_equal(q3n_safetensors_count(st), 4);
    assert_string_equal(q3n_safetensors_at(st, 2)->name, "model.big"); /* file order kept */
    int64_t n;
    float *x = to_f32(st, "model.a", &n);
    assert_bits_equal("model.a", x, a, 6);
    free(x);
    x = to_f32(st, "model.b", &n);
    assert_bits_equal("model.b", x, b, 3); /* exactly representable in f16 */
    free(x);
    x = to_f32(st, "model.big", &n);
    assert_int_equal(n, 5000);
    for (int i = 0; i < 5000; i++) big[i] = q3n_bf16_to_f32(q3n_f32_to_bf16(big[i]));
    assert_bits_equal("model.big", x, big, 5000);
    free(x);
    x = to_f32(st, "scalar", &n);
    assert_int_equal(n, 1);
    assert_true(x[0] == a[0]);
    free(x);
    const struct q3n_st_tensor *t = must_find(st, "model.a");
    struct stat sb;
    assert_int_equal(stat(path, &sb), 0);
    assert_true(t->offset % 8 == 0); /* header padded to a multiple of 8 */
    q3n_safetensors_close(st);
    w[1].name = "model.a";
    assert_int_equal(q3n_safetensors_write(path, w, 2, &err), Q3N_ERR_USAGE);
    assert_non_null(strstr(err.msg, "model.a written twice"));
    unlink(path);
    rmdir(dir);
}

/* Writes bytes to `path` and opens it. */
static enum q3n_status open_bytes(const char *path, const void *bytes, size_t n, struct q3n_error *err)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, n, f), n);
    fclose(f);
    struct q3n_safetensors *st = NULL;
    enum q3n_status s = q3n_safetensors_open(&st, path, err);
    if (s == Q3N_OK) assert_non_null(st);
    q3n_safetensors_close(st);
    return s;
}

static void test_every_truncation_of_a_valid_file_is_refused_cleanly(void **state)
{
    (void)state;
    FILE *f = fopen(PY_ST, "rb");
    assert_non_null(f);
    static unsigned char buf[40000];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_true(n > 1000 && n < sizeof buf);
    /* cut at every byte of the length, a spread of points in the header and in the data */
    char dir[] = "/tmp/q3n_test_st_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/x.safetensors", dir);
    int refused = 0;
    for (size_t cut = 0; cut < n; cut += cut < 64 ? 1 : (cut < 1200 ? 13 : 997)) {
        struct q3n_error err = {0};
        enum q3n_status s = open_bytes(path, buf, cut, &err);
        if (s != Q3N_ERR_FORMAT || !strstr(err.msg, path))
            fail_msg("cut at %zu: status %s '%s'", cut, q3n_status_name(s), err.msg);
        refused++;
    }
    assert_true(refused > 140);
    struct q3n_error err = {0};
    assert_int_equal(open_bytes(path, buf, n, &err), Q3N_OK);
    unlink(path);
    rmdir(dir);
}

static void test_pickle_names_and_missing_files_are_refused(void **state)
{
    (void)state;
    struct q3n_safetensors *st = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_safetensors_open(&st, "x/pytorch_model.bin", &err), Q3N_ERR_UNSUPPORTED);
    assert_non_null(strstr(err.msg, "convert the checkpoint to safetensors"));
    assert_int_equal(q3n_safetensors_open(&st, "harness/testdata/st/none.safetensors", &err), Q3N_ERR_IO);
    assert_non_null(strstr(err.msg, "none.safetensors"));
    assert_int_equal(q3n_safetensors_open_dir(&st, "harness/testdata/st/nodir", &err), Q3N_ERR_IO);
    assert_null(st);
}

/* Inputs the parser fuzzer found (fuzz/fuzz_safetensors.c, kept in harness/testdata/bad/): a
 * tensor name with binary bytes, and a header with no tensors over a non-empty data area. */
static void test_fuzzer_findings_give_one_printable_line(void **state)
{
    (void)state;
    const char *files[] = {"harness/testdata/bad/st_message_binary_tensor_name.safetensors",
                           "harness/testdata/bad/st_ub_null_tensors_memcpy.safetensors"};
    const char *why[] = {"holds control characters", "the tensors cover 0"};
    for (int i = 0; i < 2; i++) {
        struct q3n_safetensors *st = NULL;
        struct q3n_error err = {0};
        assert_int_equal(q3n_safetensors_open(&st, files[i], &err), Q3N_ERR_FORMAT);
        assert_null(st);
        assert_non_null(strstr(err.msg, why[i]));
        for (const unsigned char *p = (const unsigned char *)err.msg; *p; p++)
            if (*p < 0x20 || *p >= 0x7f) fail_msg("unprintable byte 0x%02x in '%s'", *p, err.msg);
    }
}

static void test_scalar_conversions_handle_subnormals_nan_and_rounding_ties(void **state)
{
    (void)state;
    assert_true(q3n_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(q3n_f16_to_f32(0x03ff) == 0x3ffp-24f);
    assert_true(q3n_f16_to_f32(0x8400) == -0x1p-14f);
    assert_true(isinf(q3n_f16_to_f32(0x7c00)));
    assert_true(isnan(q3n_f16_to_f32(0x7e00)));
    assert_true(isnan(q3n_bf16_to_f32(q3n_f32_to_bf16(NAN))));
    /* ties: 1 + 2^-8 is halfway between bf16 neighbours 1 and 1 + 2^-7: rounds to even (1) */
    assert_int_equal(q3n_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);
    assert_int_equal(q3n_f32_to_bf16(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);
    assert_int_equal(q3n_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_a_file_from_the_reference_library_converts_like_torch),
        cmocka_unit_test(test_inexact_f64_fp8_and_integer_tensors_are_refused_on_use),
        cmocka_unit_test(test_the_writer_round_trips_every_stored_dtype),
        cmocka_unit_test(test_every_truncation_of_a_valid_file_is_refused_cleanly),
        cmocka_unit_test(test_pickle_names_and_missing_files_are_refused),
        cmocka_unit_test(test_fuzzer_findings_give_one_printable_line),
        cmocka_unit_test(test_scalar_conversions_handle_subnormals_nan_and_rounding_ties),
    };
    return cmocka_run_group_tests_name("harness_safetensors", tests, NULL, NULL);
}
