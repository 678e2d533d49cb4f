/* fuzz_tensorfile.c — libFuzzer target: the HDF5 golden reader's schema checks
 * (harness/tensorfile.c). The input is written to a private temporary file and opened the
 * way `q3n verify` / `q3n compare` open a golden: root attributes, /config, /inputs/input_ids,
 * /logits, every dataset under /tensors with its info and (when small) its data.
 *
 * Every call must return OK or an error with a message (fuzz_msg.h); nothing may
 * crash or trip a sanitizer. HDF5 itself is not instrumented: a crash inside libhdf5 is
 * reported as such (docs/fuzzing.md). Built by fuzz/fuzz.mk (`make fuzz-parsers`).
 *
 * libhdf5 leaks on its own error paths when it opens a corrupt file (a bare H5Fopen/H5Fclose
 * of such a file leaks too): fuzz/lsan.supp suppresses leaks allocated inside libhdf5, and
 * H5close() after every input returns that memory, or a run dies of RSS growth within a
 * minute. This is the one file outside harness/tensorfile.c that includes hdf5.h. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <hdf5.h>

#include "../harness/tensorfile.h"
#include "fuzz_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char tmp_path[64];

struct walk {
    struct q3n_tensorfile *tf;
    int64_t visited;
};

static enum q3n_status visit(void *user, const char *name, struct q3n_error *err)
{
    struct walk *w = user;
    char path[512];
    struct q3n_tensor_info info;
    if (++w->visited > 256) return Q3N_OK;
    snprintf(path, sizeof path, "/tensors/%s", name);
    if (q3n_tensorfile_info(w->tf, path, &info, err) != Q3N_OK) {
        fuzz_check_msg(err);
        return Q3N_OK;
    }
    if (info.numel < 0 || info.rank < 0 || info.rank > Q3N_MAX_RANK) abort();
    if (info.numel <= 4096) {
        double buf[4096];
        enum q3n_dtype as = info.dtype == Q3N_DTYPE_I64 ? Q3N_DTYPE_I64 : Q3N_DTYPE_F64;
        if (q3n_tensorfile_read(w->tf, path, as, buf, 4096, &info, err) != Q3N_OK) fuzz_check_msg(err);
        if (info.rank >= 1 && info.dims[0] >= 1 &&
            q3n_tensorfile_read_rows(w->tf, path, as, 0, 1, buf, 4096, err) != Q3N_OK)
            fuzz_check_msg(err);
    }
    return Q3N_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct q3n_tensorfile *tf = NULL;
    struct q3n_error err;
    char text[256];
    double f;
    int64_t i64;
    if (tmp_path[0] == '\0') snprintf(tmp_path, sizeof tmp_path, "/tmp/q3n-fuzz-tf-%ld.h5", (long)getpid());
    FILE *fp = fopen(tmp_path, "wb");
    if (!fp) return 0;
    if (size > 0 && fwrite(data, 1, size, fp) != size) {
        fclose(fp);
        return 0;
    }
    fclose(fp);

    q3n_error_clear(&err);
    if (q3n_tensorfile_open(&tf, tmp_path, &err) != Q3N_OK) {
        fuzz_check_msg(&err);
        goto done;
    }
    if (q3n_tensorfile_get_attr_i64(tf, "/", "format_version", &i64, &err) != Q3N_OK) fuzz_check_msg(&err);
    if (q3n_tensorfile_get_attr_str(tf, "/", "dtype", text, sizeof text, &err) != Q3N_OK) fuzz_check_msg(&err);
    if (q3n_tensorfile_get_attr_str(tf, "/", "generator", text, sizeof text, &err) != Q3N_OK) fuzz_check_msg(&err);
    if (q3n_tensorfile_get_attr_f64(tf, "/", "audit_decode_vs_full_rel_l2", &f, &err) != Q3N_OK) fuzz_check_msg(&err);
    char *config_text = NULL;
    if (q3n_tensorfile_exists(tf, "/config")) {
        if (q3n_tensorfile_read_str(tf, "/config", &config_text, &err) != Q3N_OK) fuzz_check_msg(&err);
        free(config_text);
    }
    static const char *const fixed[] = {"/inputs/input_ids", "/logits", "/mtp_logits", "/decode/logits"};
    for (size_t n = 0; n < sizeof fixed / sizeof fixed[0]; n++) {
        struct q3n_tensor_info info;
        if (!q3n_tensorfile_exists(tf, fixed[n])) continue;
        if (q3n_tensorfile_info(tf, fixed[n], &info, &err) != Q3N_OK) {
            fuzz_check_msg(&err);
            continue;
        }
        if (info.numel <= 4096) {
            int64_t buf[4096];
            enum q3n_dtype as = n == 0 ? Q3N_DTYPE_I64 : Q3N_DTYPE_F64;
            if (q3n_tensorfile_read(tf, fixed[n], as, buf, 4096, NULL, &err) != Q3N_OK) fuzz_check_msg(&err);
        }
    }
    if (q3n_tensorfile_exists(tf, "/tensors")) {
        struct walk w = {tf, 0};
        if (q3n_tensorfile_list(tf, "/tensors", visit, &w, &err) != Q3N_OK) fuzz_check_msg(&err);
    }
done:
    q3n_tensorfile_close(tf);
    unlink(tmp_path);
    H5close(); /* frees what libhdf5 leaked on this input; the next call reinitialises it */
    return 0;
}
