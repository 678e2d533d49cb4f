/* fuzz_safetensors.c — libFuzzer target: the safetensors header parser and the sharded
 * checkpoint index (harness/safetensors.c).
 *
 * The first byte of the input picks the mode; the rest is written to a private temporary
 * folder:
 *   even: the bytes are model.safetensors; q3n_safetensors_open_dir maps and checks it, then
 *         every tensor is looked up by name and small ones are converted to float32;
 *   odd:  the bytes are model.safetensors.index.json, next to a fixed valid shard
 *         "model-00001-of-00001.safetensors" (tensors "a" [2] F32 and "b" [1,3] BF16) written
 *         once at start-up; open_dir must check the weight_map against it.
 * Any input must give OK or an error message (fuzz_msg.h), never a crash or sanitizer report.
 * Built by fuzz/fuzz.mk (`make fuzz-parsers`). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../harness/safetensors.h"
#include "fuzz_msg.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char dir[64], file_path[128], index_path[128], shard_path[128];

static void init_once(void)
{
    struct q3n_error err;
    if (dir[0] != '\0') return;
    snprintf(dir, sizeof dir, "/tmp/q3n-fuzz-st-XXXXXX");
    if (!mkdtemp(dir)) abort();
    snprintf(file_path, sizeof file_path, "%s/model.safetensors", dir);
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir);
    snprintf(shard_path, sizeof shard_path, "%s/model-00001-of-00001.safetensors", dir);
    static const float a[2] = {1.0f, -2.0f}, b[3] = {0.5f, 0.25f, -0.125f};
    struct q3n_st_write_tensor t[2] = {{"a", Q3N_ST_F32, 1, {2}, a}, {"b", Q3N_ST_BF16, 2, {1, 3}, b}};
    if (q3n_safetensors_write(shard_path, t, 2, &err) != Q3N_OK) abort();
}

static int write_file(const char *path, const uint8_t *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    int ok = size == 0 || fwrite(data, 1, size, f) == size;
    return fclose(f) == 0 && ok;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct q3n_safetensors *st = NULL;
    struct q3n_error err;
    init_once();
    if (size < 1) return 0;
    int index_mode = data[0] & 1;
    unlink(file_path);
    unlink(index_path);
    if (!write_file(index_mode ? index_path : file_path, data + 1, size - 1)) return 0;

    q3n_error_clear(&err);
    if (q3n_safetensors_open_dir(&st, dir, &err) != Q3N_OK) {
        fuzz_check_msg(&err);
        if (st != NULL) abort();
        return 0;
    }
    int64_t n = q3n_safetensors_count(st);
    if (n < 0) abort();
    for (int64_t i = 0; i < n && i < 4096; i++) {
        const struct q3n_st_tensor *t = q3n_safetensors_at(st, i);
        if (!t || !t->name) abort();
        if (q3n_safetensors_find(st, t->name) == NULL) abort(); /* every listed name is findable */
        if (t->shard < 0 || t->shard >= q3n_safetensors_shard_count(st)) abort();
        if (t->numel < 0 || t->rank < 0 || t->rank > Q3N_ST_MAX_RANK) abort();
        if (t->numel <= 65536) {
            float *out = malloc((size_t)(t->numel > 0 ? t->numel : 1) * sizeof *out);
            if (!out) abort();
            if (q3n_safetensors_to_f32(st, t, out, &err) != Q3N_OK) fuzz_check_msg(&err);
            free(out);
        }
    }
    q3n_safetensors_close(st);
    return 0;
}
