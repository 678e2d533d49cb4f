/* safetensors.h — memory-mapped safetensors files, single or sharded, and a writer.
 *
 * A q3n_safetensors is a set of one or more mapped files (a single model.safetensors, or
 * the shards named by model.safetensors.index.json). Opening checks every header field
 * against the file: 8-byte little-endian header length inside the file, a JSON object
 * header, known dtypes, shapes whose byte size equals the data_offsets span, offsets
 * inside the data area, no overlaps, no gaps, no duplicate names (also across shards).
 * Any violation is Q3N_ERR_FORMAT naming the file and the tensor. Files are never read
 * whole: tensor data stays in the mapping until q3n_safetensors_close.
 *
 * Pickle checkpoints (.bin, .pt, .pth) are refused with Q3N_ERR_UNSUPPORTED: q3n never
 * unpickles anything. */
#ifndef Q3N_SAFETENSORS_H
#define Q3N_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define Q3N_ST_MAX_RANK 8

/* Every dtype the safetensors format defines. q3n converts F32, F16, BF16 and F64 (the
 * last only when every value is exactly a float) to float32; the rest are listed but
 * refused on use (FP8 with a message saying block-quantized checkpoints are unsupported). */
enum q3n_st_dtype {
    Q3N_ST_F64 = 0,
    Q3N_ST_F32,
    Q3N_ST_F16,
    Q3N_ST_BF16,
    Q3N_ST_F8_E4M3,
    Q3N_ST_F8_E5M2,
    Q3N_ST_I64,
    Q3N_ST_I32,
    Q3N_ST_I16,
    Q3N_ST_I8,
    Q3N_ST_U64,
    Q3N_ST_U32,
    Q3N_ST_U16,
    Q3N_ST_U8,
    Q3N_ST_BOOL
};

const char *q3n_st_dtype_name(enum q3n_st_dtype dtype); /* the header spelling: "F32", "BF16", ... */
size_t q3n_st_dtype_size(enum q3n_st_dtype dtype);

/* One tensor of the set. `name` and `data` point into the set and live until close. */
struct q3n_st_tensor {
    const char *name;
    enum q3n_st_dtype dtype;
    int rank;
    int64_t dims[Q3N_ST_MAX_RANK];
    int64_t numel;
    uint64_t offset;    /* byte offset of the data within its file */
    uint64_t nbytes;
    const void *data;   /* inside the mapping; aligned only as the file places it */
    int shard;          /* index of the file holding it */
};

struct q3n_safetensors;

/* Maps one .safetensors file and checks its header. */
enum q3n_status q3n_safetensors_open(struct q3n_safetensors **st, const char *path, struct q3n_error *err);

/* Opens a checkpoint folder's weights: model.safetensors.index.json (sharded) if present,
 * else model.safetensors. Refuses folders with only pickle weights (.bin/.pt/.pth) with a
 * message saying to convert to safetensors; no weights at all is Q3N_ERR_IO. For an index:
 * shard names must be plain file names in the folder, every weight_map entry must be in
 * its shard, and every shard tensor must be in weight_map under that shard. */
enum q3n_status q3n_safetensors_open_dir(struct q3n_safetensors **st, const char *dir, struct q3n_error *err);

/* Unmaps and frees. Accepts NULL. */
void q3n_safetensors_close(struct q3n_safetensors *st);

/* Tensors in file order (shard 0's header order first, ...). */
int64_t q3n_safetensors_count(const struct q3n_safetensors *st);
const struct q3n_st_tensor *q3n_safetensors_at(const struct q3n_safetensors *st, int64_t i);

/* NULL when absent (binary search over the sorted names). */
const struct q3n_st_tensor *q3n_safetensors_find(const struct q3n_safetensors *st, const char *name);

int q3n_safetensors_shard_count(const struct q3n_safetensors *st);
const char *q3n_safetensors_shard_path(const struct q3n_safetensors *st, int shard);

/* Converts a tensor to float32 into `out` (t->numel floats). F32 is copied, BF16/F16
 * expanded exactly; F64 accepted only if every value is exactly representable in float32
 * (else Q3N_ERR_UNSUPPORTED naming the tensor, the index and the value); FP8 and integer
 * dtypes are Q3N_ERR_UNSUPPORTED. */
enum q3n_status q3n_safetensors_to_f32(const struct q3n_safetensors *st, const struct q3n_st_tensor *t, float *out,
                                       struct q3n_error *err);

/* Scalar conversions (exact for bf16/f16 -> f32; f32 -> bf16 rounds to nearest even,
 * NaN stays NaN). */
float q3n_bf16_to_f32(uint16_t bits);
float q3n_f16_to_f32(uint16_t bits);
uint16_t q3n_f32_to_bf16(float x);

/* One tensor for the writer: float32 data, stored as `dtype` (F32, BF16 or F16... F32
 * and BF16 are what checkpoints use; F16 rounds to nearest even too). */
struct q3n_st_write_tensor {
    const char *name;
    enum q3n_st_dtype dtype;
    int rank;
    int64_t dims[Q3N_ST_MAX_RANK];
    const float *data;
};

/* Writes a .safetensors file at `path` (directly; callers wanting atomicity write into a
 * temporary folder). Header: {"__metadata__": {"format": "pt"}, name: {dtype, shape,
 * data_offsets}, ...}, padded with spaces to a multiple of 8; data in the given order. */
enum q3n_status q3n_safetensors_write(const char *path, const struct q3n_st_write_tensor *tensors, int64_t n,
                                      struct q3n_error *err);

#endif
