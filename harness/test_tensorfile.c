/* test_tensorfile.c — the HDF5 tensor file: round trips of every dtype, attributes, listing
 * order, atomic commit, and clean errors (naming file and dataset) on missing datasets,
 * wrong rank/dims/dtype, truncated and non-HDF5 files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tensorfile.h"
#include "testkit.h"

struct fixture {
    char dir[64];
    char path[128];
};

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    if (!fx) return -1;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/q3n_test_tf_XXXXXX");
    if (!mkdtemp(fx->dir)) return -1;
    snprintf(fx->path, sizeof fx->path, "%s/t.h5", fx->dir);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", fx->dir);
    int rc = system(cmd);
    free(fx);
    return rc == 0 ? 0 : -1;
}

static int file_exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

/* Asserts that the message names every given fragment (file, dataset, ...). */
static void assert_msg_names(const struct q3n_error *err, const char *a, const char *b)
{
    if (a && !strstr(err->msg, a)) fail_msg("message '%s' does not name '%s'", err->msg, a);
    if (b && !strstr(err->msg, b)) fail_msg("message '%s' does not name '%s'", err->msg, b);
}

/* Writes a file with a few tensors of every dtype and some attributes. */
static void write_sample(const char *path)
{
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_tensorfile_create(&tf, path, &err), Q3N_OK);
    float f32[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
    double f64[3] = {0.1, -1e300, 3.0};
    int64_t i64[4] = {0, -1, INT64_MAX, 151935};
    uint16_t bf16[3] = {0x3f80, 0xc000, 0x7f80}; /* 1, -2, +inf */
    uint16_t f16[4] = {0x3c00, 0xc000, 0x0001, 0x7bff}; /* 1, -2, smallest subnormal, 65504 */
    int64_t d23[2] = {2, 3}, d3[1] = {3}, d4[1] = {4};
    assert_int_equal(q3n_tensorfile_write(tf, "/tensors/b.out", Q3N_DTYPE_F32, 2, d23, f32, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_write(tf, "/tensors/a.out", Q3N_DTYPE_F64, 1, d3, f64, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_write(tf, "/inputs/input_ids", Q3N_DTYPE_I64, 1, d4, i64, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_write(tf, "/tensors/c.bf16", Q3N_DTYPE_BF16, 1, d3, bf16, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_write(tf, "/tensors/d.f16", Q3N_DTYPE_F16, 1, d4, f16, &err), Q3N_OK);
    float scalar = 42.0f;
    assert_int_equal(q3n_tensorfile_write(tf, "/scalar", Q3N_DTYPE_F32, 0, NULL, &scalar, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_write_str(tf, "/config", "{\"model_type\": \"qwen3_next\"}", &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_set_attr_str(tf, "/", "generator", "test_tensorfile", &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_set_attr_i64(tf, "/", "format_version", 1, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_set_attr_f64(tf, "/tensors/b.out", "noise_rel_l2", 2.5e-7, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_commit(tf, &err), Q3N_OK);
}

static void test_every_dtype_round_trips_through_a_file(void **state)
{
    struct fixture *fx = *state;
    write_sample(fx->path);
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_tensorfile_open(&tf, fx->path, &err), Q3N_OK);

    float f32[6];
    float want32[6] = {1.5f, -2.0f, 3.25f, 0.0f, -0.0f, 1e-30f};
    struct q3n_tensor_info expect = {.dtype = Q3N_DTYPE_F32, .rank = 2, .dims = {2, 3}};
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors/b.out", Q3N_DTYPE_F32, f32, 6, &expect, &err), Q3N_OK);
    assert_memory_equal(f32, want32, sizeof f32);

    double f64[3], want64[3] = {0.1, -1e300, 3.0};
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors/a.out", Q3N_DTYPE_F64, f64, 3, NULL, &err), Q3N_OK);
    assert_memory_equal(f64, want64, sizeof f64);
    float f64as32[3];
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors/a.out", Q3N_DTYPE_F32, f64as32, 3, NULL, &err), Q3N_OK);
    assert_true(f64as32[0] == 0.1f && f64as32[2] == 3.0f);

    int64_t ids[4], want_ids[4] = {0, -1, INT64_MAX, 151935};
    assert_int_equal(q3n_tensorfile_read(tf, "/inputs/input_ids", Q3N_DTYPE_I64, ids, 4, NULL, &err), Q3N_OK);
    assert_memory_equal(ids, want_ids, sizeof ids);

    struct q3n_tensor_info info;
    assert_int_equal(q3n_tensorfile_info(tf, "/tensors/c.bf16", &info, &err), Q3N_OK);
    assert_int_equal(info.dtype, Q3N_DTYPE_BF16);
    float bf[3];
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors/c.bf16", Q3N_DTYPE_F32, bf, 3, NULL, &err), Q3N_OK);
    assert_true(bf[0] == 1.0f && bf[1] == -2.0f && bf[2] > 3e38f);

    assert_int_equal(q3n_tensorfile_info(tf, "/tensors/d.f16", &info, &err), Q3N_OK);
    assert_int_equal(info.dtype, Q3N_DTYPE_F16);
    double h[4];
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors/d.f16", Q3N_DTYPE_F64, h, 4, NULL, &err), Q3N_OK);
    assert_true(h[0] == 1.0 && h[1] == -2.0 && h[2] == 0x1p-24 && h[3] == 65504.0);

    assert_int_equal(q3n_tensorfile_info(tf, "/scalar", &info, &err), Q3N_OK);
    assert_int_equal(info.rank, 0);
    assert_int_equal(info.numel, 1);
    float scalar = 0;
    assert_int_equal(q3n_tensorfile_read(tf, "/scalar", Q3N_DTYPE_F32, &scalar, 1, NULL, &err), Q3N_OK);
    assert_true(scalar == 42.0f);

    char *cfg = NULL;
    assert_int_equal(q3n_tensorfile_read_str(tf, "/config", &cfg, &err), Q3N_OK);
    assert_string_equal(cfg, "{\"model_type\": \"qwen3_next\"}");
    free(cfg);

    char gen[64];
    int64_t ver = 0;
    double noise = 0;
    assert_int_equal(q3n_tensorfile_get_attr_str(tf, "/", "generator", gen, sizeof gen, &err), Q3N_OK);
    assert_string_equal(gen, "test_tensorfile");
    assert_int_equal(q3n_tensorfile_get_attr_i64(tf, "/", "format_version", &ver, &err), Q3N_OK);
    assert_int_equal(ver, 1);
    assert_int_equal(q3n_tensorfile_get_attr_f64(tf, "/tensors/b.out", "noise_rel_l2", &noise, &err), Q3N_OK);
    assert_true(noise == 2.5e-7);
    assert_true(q3n_tensorfile_exists(tf, "/tensors/b.out"));
    assert_false(q3n_tensorfile_exists(tf, "/tensors/nope"));
    assert_false(q3n_tensorfile_exists(tf, "/nogroup/nope"));
    q3n_tensorfile_close(tf);
}

static void test_a_large_tensor_is_chunked_and_reads_back_by_rows(void **state)
{
    struct fixture *fx = *state;
    const int64_t rows = 300, cols = 1000; /* 1.2 MB: chunked and compressed */
    float *x = malloc((size_t)(rows * cols) * sizeof *x), *y = malloc((size_t)(rows * cols) * sizeof *y);
    assert_non_null(x);
    assert_non_null(y);
    for (int64_t i = 0; i < rows * cols; i++) x[i] = (float)((i * 7919) % 1013) * 0.125f - 60.0f;
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    int64_t dims[2] = {rows, cols};
    assert_int_equal(q3n_tensorfile_create(&tf, fx->path, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_write(tf, "/logits", Q3N_DTYPE_F32, 2, dims, x, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_commit(tf, &err), Q3N_OK);
    struct stat sb;
    assert_int_equal(stat(fx->path, &sb), 0);
    assert_true(sb.st_size < rows * cols * 4); /* compressed: the values repeat */

    assert_int_equal(q3n_tensorfile_open(&tf, fx->path, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_read(tf, "/logits", Q3N_DTYPE_F32, y, rows * cols, NULL, &err), Q3N_OK);
    assert_tensor_close_f32("logits", y, x, rows * cols, 0.0, 0.0);
    assert_int_equal(q3n_tensorfile_read_rows(tf, "/logits", Q3N_DTYPE_F32, 117, 5, y, 5 * cols, &err), Q3N_OK);
    assert_tensor_close_f32("logits rows 117..121", y, x + 117 * cols, 5 * cols, 0.0, 0.0);
    assert_int_equal(q3n_tensorfile_read_rows(tf, "/logits", Q3N_DTYPE_F32, 298, 5, y, 5 * cols, &err),
                     Q3N_ERR_SHAPE);
    assert_msg_names(&err, fx->path, "/logits");
    q3n_tensorfile_close(tf);
    free(x);
    free(y);
}

struct names {
    char list[16][32];
    int n;
};

static enum q3n_status collect(void *user, const char *name, struct q3n_error *err)
{
    (void)err;
    struct names *nm = user;
    if (nm->n < 16) snprintf(nm->list[nm->n++], 32, "%s", name);
    return Q3N_OK;
}

static void test_listing_follows_creation_order(void **state)
{
    struct fixture *fx = *state;
    const char *order[] = {"model.layers.10.out", "model.layers.2.out", "z", "a", "model.layers.1.out"};
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    int64_t d1[1] = {1};
    float v = 0;
    assert_int_equal(q3n_tensorfile_create(&tf, fx->path, &err), Q3N_OK);
    for (int i = 0; i < 5; i++) {
        char name[64];
        snprintf(name, sizeof name, "/tensors/%s", order[i]);
        assert_int_equal(q3n_tensorfile_write(tf, name, Q3N_DTYPE_F32, 1, d1, &v, &err), Q3N_OK);
    }
    assert_int_equal(q3n_tensorfile_write(tf, "/tensors/sub/x", Q3N_DTYPE_F32, 1, d1, &v, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_commit(tf, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_open(&tf, fx->path, &err), Q3N_OK);
    struct names nm = {0};
    assert_int_equal(q3n_tensorfile_list(tf, "/tensors", collect, &nm, &err), Q3N_OK);
    assert_int_equal(nm.n, 5); /* the group "sub" is not a dataset */
    for (int i = 0; i < 5; i++) assert_string_equal(nm.list[i], order[i]);
    assert_int_equal(q3n_tensorfile_list(tf, "/missing", collect, &nm, &err), Q3N_ERR_FORMAT);
    assert_msg_names(&err, fx->path, "/missing");
    q3n_tensorfile_close(tf);
}

/* harness/testdata/h5/untracked.h5 was written by h5py without creation-order tracking
 * (harness/testdata/make_h5.py): names must come back in natural order. */
static void test_listing_without_tracking_is_in_natural_order(void **state)
{
    (void)state;
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_tensorfile_open(&tf, "harness/testdata/h5/untracked.h5", &err), Q3N_OK);
    struct names nm = {0};
    assert_int_equal(q3n_tensorfile_list(tf, "/tensors", collect, &nm, &err), Q3N_OK);
    const char *want[] = {"model.layers.1.out", "model.layers.2.out", "model.layers.10.out", "model.norm.out"};
    assert_int_equal(nm.n, 4);
    for (int i = 0; i < 4; i++) assert_string_equal(nm.list[i], want[i]);
    /* h5py's own string and integer attributes and its float16 */
    char gen[64];
    int64_t ver = 0;
    assert_int_equal(q3n_tensorfile_get_attr_str(tf, "/", "generator", gen, sizeof gen, &err), Q3N_OK);
    assert_string_equal(gen, "h5py");
    assert_int_equal(q3n_tensorfile_get_attr_str(tf, "/", "fixed", gen, sizeof gen, &err), Q3N_OK);
    assert_string_equal(gen, "fixed-size");
    assert_int_equal(q3n_tensorfile_get_attr_i64(tf, "/", "format_version", &ver, &err), Q3N_OK);
    assert_int_equal(ver, 1);
    assert_int_equal(q3n_tensorfile_get_attr_str(tf, "/", "generator", gen, 3, &err), Q3N_ERR_FORMAT);
    assert_msg_names(&err, "untracked.h5", "generator");
    float h[2];
    assert_int_equal(q3n_tensorfile_read(tf, "/half", Q3N_DTYPE_F32, h, 2, NULL, &err), Q3N_OK);
    assert_true(h[0] == 0.5f && h[1] == -1024.0f);
    char *cfg = NULL;
    assert_int_equal(q3n_tensorfile_read_str(tf, "/config", &cfg, &err), Q3N_OK);
    assert_string_equal(cfg, "{}");
    free(cfg);
    q3n_tensorfile_close(tf);
}

static void test_a_missing_dataset_or_attribute_is_a_format_error_naming_it(void **state)
{
    struct fixture *fx = *state;
    write_sample(fx->path);
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_tensorfile_open(&tf, fx->path, &err), Q3N_OK);
    float x[8];
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors/model.norm.out", Q3N_DTYPE_F32, x, 8, NULL, &err),
                     Q3N_ERR_FORMAT);
    assert_msg_names(&err, fx->path, "/tensors/model.norm.out");
    assert_int_equal(q3n_tensorfile_read(tf, "/nogroup/x", Q3N_DTYPE_F32, x, 8, NULL, &err), Q3N_ERR_FORMAT);
    assert_msg_names(&err, fx->path, "/nogroup/x");
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors", Q3N_DTYPE_F32, x, 8, NULL, &err), Q3N_ERR_FORMAT);
    assert_msg_names(&err, fx->path, "not a dataset");
    double d;
    assert_int_equal(q3n_tensorfile_get_attr_f64(tf, "/", "seed", &d, &err), Q3N_ERR_FORMAT);
    assert_msg_names(&err, fx->path, "seed");
    int64_t i;
    assert_int_equal(q3n_tensorfile_get_attr_i64(tf, "/tensors/b.out", "noise_rel_l2", &i, &err), Q3N_ERR_SHAPE);
    assert_msg_names(&err, "/tensors/b.out", "noise_rel_l2");
    char *s = NULL;
    assert_int_equal(q3n_tensorfile_read_str(tf, "/tensors/b.out", &s, &err), Q3N_ERR_SHAPE);
    assert_null(s);
    q3n_tensorfile_close(tf);
}

static void test_wrong_rank_dims_dtype_or_capacity_is_a_shape_error(void **state)
{
    struct fixture *fx = *state;
    write_sample(fx->path);
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_tensorfile_open(&tf, fx->path, &err), Q3N_OK);
    float x[16];
    struct q3n_tensor_info rank1 = {.dtype = Q3N_DTYPE_F32, .rank = 1, .dims = {6}};
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors/b.out", Q3N_DTYPE_F32, x, 16, &rank1, &err), Q3N_ERR_SHAPE);
    assert_msg_names(&err, fx->path, "/tensors/b.out");
    assert_msg_names(&err, "[2,3]", "[6]");
    struct q3n_tensor_info dims = {.dtype = Q3N_DTYPE_F32, .rank = 2, .dims = {3, 2}};
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors/b.out", Q3N_DTYPE_F32, x, 16, &dims, &err), Q3N_ERR_SHAPE);
    assert_msg_names(&err, fx->path, "[3,2]");
    /* int64 data never silently becomes float, nor float int64 */
    assert_int_equal(q3n_tensorfile_read(tf, "/inputs/input_ids", Q3N_DTYPE_F32, x, 16, NULL, &err),
                     Q3N_ERR_SHAPE);
    assert_msg_names(&err, "/inputs/input_ids", "int64");
    int64_t ids[16];
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors/b.out", Q3N_DTYPE_I64, ids, 16, NULL, &err), Q3N_ERR_SHAPE);
    assert_msg_names(&err, fx->path, "/tensors/b.out");
    struct q3n_tensor_info want_int = {.dtype = Q3N_DTYPE_I64, .rank = 2, .dims = {2, 3}};
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors/b.out", Q3N_DTYPE_F32, x, 16, &want_int, &err),
                     Q3N_ERR_SHAPE);
    assert_msg_names(&err, "/tensors/b.out", "expected int64");
    assert_int_equal(q3n_tensorfile_read(tf, "/tensors/b.out", Q3N_DTYPE_F32, x, 5, NULL, &err), Q3N_ERR_SHAPE);
    assert_msg_names(&err, "/tensors/b.out", "5-element");
    /* the file's string dataset is not a tensor */
    assert_int_equal(q3n_tensorfile_read(tf, "/config", Q3N_DTYPE_F32, x, 16, NULL, &err), Q3N_ERR_SHAPE);
    assert_msg_names(&err, fx->path, "/config");
    q3n_tensorfile_close(tf);
}

static void test_truncated_and_non_hdf5_files_are_refused(void **state)
{
    struct fixture *fx = *state;
    write_sample(fx->path);
    struct stat sb;
    assert_int_equal(stat(fx->path, &sb), 0);
    assert_int_equal(truncate(fx->path, sb.st_size / 2), 0);
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_tensorfile_open(&tf, fx->path, &err), Q3N_ERR_FORMAT);
    assert_null(tf);
    assert_msg_names(&err, fx->path, "truncated");

    FILE *f = fopen(fx->path, "wb");
    assert_non_null(f);
    fputs("{\"not\": \"hdf5\"}\n", f);
    fclose(f);
    assert_int_equal(q3n_tensorfile_open(&tf, fx->path, &err), Q3N_ERR_FORMAT);
    assert_msg_names(&err, fx->path, "not an HDF5 file");

    char missing[160];
    snprintf(missing, sizeof missing, "%s/none.h5", fx->dir);
    assert_int_equal(q3n_tensorfile_open(&tf, missing, &err), Q3N_ERR_IO);
    assert_msg_names(&err, missing, NULL);
    assert_int_equal(q3n_tensorfile_open(&tf, fx->dir, &err), Q3N_ERR_IO);
}

/* harness/testdata/bad/h5_wrong_schema.h5 (make_h5.py): a golden with the wrong schema. Read
 * the way the golden schema says, every dataset is refused with file and dataset named. */
static void test_a_golden_with_the_wrong_schema_is_refused_dataset_by_dataset(void **state)
{
    (void)state;
    const char *path = "harness/testdata/bad/h5_wrong_schema.h5";
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_tensorfile_open(&tf, path, &err), Q3N_OK);
    char *text = NULL;
    assert_int_equal(q3n_tensorfile_read_str(tf, "/config", &text, &err), Q3N_ERR_SHAPE);
    assert_msg_names(&err, path, "/config: expected a string");
    int64_t ids[16];
    struct q3n_tensor_info want_ids = {.dtype = Q3N_DTYPE_I64, .rank = 1, .dims = {6}};
    assert_int_equal(q3n_tensorfile_read(tf, "/inputs/input_ids", Q3N_DTYPE_I64, ids, 16, &want_ids, &err),
                     Q3N_ERR_SHAPE);
    assert_msg_names(&err, path, "/inputs/input_ids: shape [1,2,3], expected [6]");
    float x[16];
    assert_int_equal(q3n_tensorfile_read(tf, "/logits", Q3N_DTYPE_F32, x, 16, NULL, &err), Q3N_ERR_SHAPE);
    assert_msg_names(&err, path, "/logits: unsupported element type");
    struct q3n_tensor_info info;
    assert_int_equal(q3n_tensorfile_info(tf, "/tensors/model.embed_tokens.out", &info, &err), Q3N_ERR_SHAPE);
    assert_msg_names(&err, path, "dtype='bfloat16' on a dataset that is not 16-bit integers");
    q3n_tensorfile_close(tf);
}

/* The tensorfile fuzzer's input whose /config claims a 4278194688-byte string: refused from the
 * length stored in the file, before libhdf5 allocates a buffer of that size. */
static void test_a_string_longer_than_its_file_is_refused_before_reading(void **state)
{
    (void)state;
    const char *path = "harness/testdata/bad/h5_config_vlen_length_4GB.h5";
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_tensorfile_open(&tf, path, &err), Q3N_OK);
    char *text = NULL;
    assert_int_equal(q3n_tensorfile_read_str(tf, "/config", &text, &err), Q3N_ERR_FORMAT);
    assert_null(text);
    assert_msg_names(&err, path, "/config: the string claims 4278194688 bytes, more than the file holds");
    q3n_tensorfile_close(tf);
}

static void test_a_dataset_name_with_control_characters_is_refused_when_listing(void **state)
{
    (void)state;
    const char *path = "harness/testdata/bad/h5_control_char_name.h5";
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    assert_int_equal(q3n_tensorfile_open(&tf, path, &err), Q3N_OK);
    struct names nm = {0};
    assert_int_equal(q3n_tensorfile_list(tf, "/tensors", collect, &nm, &err), Q3N_ERR_FORMAT);
    assert_msg_names(&err, path, "control characters");
    assert_int_equal(nm.n, 0);
    q3n_tensorfile_close(tf);
}

static void test_nothing_appears_at_the_path_until_commit(void **state)
{
    struct fixture *fx = *state;
    char tmp[160];
    snprintf(tmp, sizeof tmp, "%s.tmp", fx->path);
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err = {0};
    int64_t d1[1] = {1};
    float v = 1;
    assert_int_equal(q3n_tensorfile_create(&tf, fx->path, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_write(tf, "/x", Q3N_DTYPE_F32, 1, d1, &v, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_write(tf, "/x", Q3N_DTYPE_F32, 1, d1, &v, &err), Q3N_ERR_USAGE);
    assert_msg_names(&err, fx->path, "/x");
    assert_int_equal(q3n_tensorfile_write(tf, "relative", Q3N_DTYPE_F32, 1, d1, &v, &err), Q3N_ERR_USAGE);
    assert_true(file_exists(tmp));
    assert_false(file_exists(fx->path));
    q3n_tensorfile_close(tf); /* abandoned: the temporary goes too */
    assert_false(file_exists(tmp));
    assert_false(file_exists(fx->path));

    assert_int_equal(q3n_tensorfile_create(&tf, fx->path, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_write(tf, "/x", Q3N_DTYPE_F32, 1, d1, &v, &err), Q3N_OK);
    assert_int_equal(q3n_tensorfile_commit(tf, &err), Q3N_OK);
    assert_false(file_exists(tmp));
    assert_true(file_exists(fx->path));
    q3n_tensorfile_close(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_every_dtype_round_trips_through_a_file, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_large_tensor_is_chunked_and_reads_back_by_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listing_follows_creation_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_listing_without_tracking_is_in_natural_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_a_missing_dataset_or_attribute_is_a_format_error_naming_it, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_wrong_rank_dims_dtype_or_capacity_is_a_shape_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_and_non_hdf5_files_are_refused, setup, teardown),
        cmocka_unit_test(test_a_golden_with_the_wrong_schema_is_refused_dataset_by_dataset),
        cmocka_unit_test(test_a_dataset_name_with_control_characters_is_refused_when_listing),
        cmocka_unit_test(test_a_string_longer_than_its_file_is_refused_before_reading),
        cmocka_unit_test_setup_teardown(test_nothing_appears_at_the_path_until_commit, setup, teardown),
    };
    return cmocka_run_group_tests_name("harness_tensorfile", tests, NULL, NULL);
}
