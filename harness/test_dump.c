/* test_dump.c — a dump of a synthetic run holds the golden schema: root attributes, /config,
 * /inputs/input_ids, /logits and every tap under /tensors with the tap's shape and values; an
 * uncommitted dump leaves no file; a tap emitted twice is refused. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dump.h"
#include "impl.h"
#include "synth.h"

static void dump_of_a_run_holds_the_golden_schema(void **state)
{
    (void)state;
    char dir[] = "/tmp/q3n_test_dump_XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/run.h5", dir);
    struct q3n_config cfg;
    struct q3n_error err = {0};
    struct q3n_model *m = NULL;
    assert_int_equal(q3n_synth_config(&cfg, "tiny", &err), Q3N_OK);
    assert_int_equal(q3n_synth_model_create(&m, &cfg, 3, &err), Q3N_OK);
    const struct q3n_impl *impl = q3n_impl_find(q3n_impl_names()[0]);
    assert_non_null(impl);
    struct q3n_run_options opt;
    q3n_run_options_default(&opt);
    opt.max_tokens = 5;
    void *s = NULL;
    assert_int_equal(impl->open(&s, m, &opt, &err), Q3N_OK);
    int64_t tok[5] = {3, 1, 4, 1, 5};
    float logits[5 * 128];
    struct q3n_dump *d = NULL;
    assert_int_equal(q3n_dump_create(&d, path, &err), Q3N_OK);
    struct q3n_tap_sink sink = q3n_dump_sink(d);
    if (impl->forward(s, logits, tok, 5, &sink, &err) != Q3N_OK) fail_msg("%s", err.msg);
    char json[8192];
    assert_int_equal(q3n_synth_config_json(json, sizeof json, &cfg, &err), Q3N_OK);
    struct q3n_dump_info info = {.generator = "q3n run", .dtype = "float32", .impl = impl->name,
                                 .kernels = impl->describe(s), .checkpoint = "", .device = "cpu",
                                 .preset = "tiny", .seed = 3, .config_json = json};
    const int64_t dt[1] = {5}, dl[2] = {5, 128};
    assert_int_equal(q3n_dump_write_info(d, &info, &err), Q3N_OK);
    assert_int_equal(q3n_dump_write(d, "/inputs/input_ids", Q3N_DTYPE_I64, 1, dt, tok, &err), Q3N_OK);
    assert_int_equal(q3n_dump_write(d, "/logits", Q3N_DTYPE_F32, 2, dl, logits, &err), Q3N_OK);
    /* the same tap twice is refused */
    struct q3n_tap tap = {.name = "model.norm.out", .dtype = Q3N_DTYPE_F32, .rank = 1, .dims = {1}, .data = logits};
    assert_int_equal(sink.fn(sink.user, &tap, &err), Q3N_ERR_USAGE);
    assert_int_equal(access(path, F_OK), -1); /* nothing at the path before commit */
    assert_int_equal(q3n_dump_commit(d, &err), Q3N_OK);

    struct q3n_tensorfile *tf = NULL;
    assert_int_equal(q3n_tensorfile_open(&tf, path, &err), Q3N_OK);
    int64_t v = 0;
    assert_int_equal(q3n_tensorfile_get_attr_i64(tf, "/", "format_version", &v, &err), Q3N_OK);
    assert_int_equal(v, 1);
    char str[256];
    assert_int_equal(q3n_tensorfile_get_attr_str(tf, "/", "impl", str, sizeof str, &err), Q3N_OK);
    assert_string_equal(str, impl->name);
    char *cj = NULL;
    assert_int_equal(q3n_tensorfile_read_str(tf, "/config", &cj, &err), Q3N_OK);
    assert_string_equal(cj, json);
    free(cj);
    struct q3n_tensor_info ti;
    assert_int_equal(q3n_tensorfile_info(tf, "/tensors/model.layers.3.self_attn.q_rope", &ti, &err), Q3N_OK);
    assert_int_equal(ti.rank, 3);
    assert_int_equal(ti.dims[0], 5);
    assert_int_equal(ti.dims[1], cfg.num_attention_heads);
    assert_int_equal(ti.dims[2], cfg.head_dim);
    assert_int_equal(q3n_tensorfile_info(tf, "/tensors/model.layers.0.mlp.gate.topk_idx", &ti, &err), Q3N_OK);
    assert_int_equal(ti.dtype, Q3N_DTYPE_I64);
    float back[5 * 128];
    assert_int_equal(q3n_tensorfile_read(tf, "/logits", Q3N_DTYPE_F32, back, 5 * 128, NULL, &err), Q3N_OK);
    assert_int_equal(memcmp(back, logits, sizeof back), 0);
    q3n_tensorfile_close(tf);

    /* an uncommitted dump leaves nothing behind */
    char path2[160];
    snprintf(path2, sizeof path2, "%s/aborted.h5", dir);
    assert_int_equal(q3n_dump_create(&d, path2, &err), Q3N_OK);
    assert_int_equal(q3n_dump_write(d, "/inputs/input_ids", Q3N_DTYPE_I64, 1, dt, tok, &err), Q3N_OK);
    q3n_dump_close(d);
    char tmp[200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path2);
    assert_int_equal(access(path2, F_OK), -1);
    assert_int_equal(access(tmp, F_OK), -1);

    impl->close(s);
    q3n_model_close(m);
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(dump_of_a_run_holds_the_golden_schema),
    };
    return cmocka_run_group_tests_name("harness_dump", tests, NULL, NULL);
}
