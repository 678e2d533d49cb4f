/* safetensors.c — mapped, fully checked safetensors files; see safetensors.h.
 *
 * Layout of a file: u64 little-endian N, N bytes of JSON header, then the data area. Each
 * header entry maps a name to {dtype, shape, data_offsets: [begin, end]} relative to the
 * data area. Nothing from the header is trusted: sizes are overflow-checked in 64 bits and
 * the tensors must tile the data area exactly (as the reference implementation demands). */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cJSON.h>

/* safetensors is little-endian; data is read and written in host order. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c assumes a little-endian host"
#endif

#define ST_PATH_MAX 4096
#define ST_HEADER_MAX ((uint64_t)100 << 20) /* the reference implementation's limit */
#define ST_INDEX_MAX ((long)64 << 20)
#define ST_EXACT_INT 9007199254740992.0     /* 2^53: JSON numbers above this are not exact */

struct shard {
    char path[ST_PATH_MAX];
    void *map;
    size_t size;
};

struct q3n_safetensors {
    struct shard *shards;
    int nshards;
    struct q3n_st_tensor *tensors;
    int64_t n, cap;
    const struct q3n_st_tensor **sorted; /* by name, for lookup */
};

/* ---- dtypes and scalar conversions ------------------------------------------------------------ */

static const struct {
    const char *name;
    size_t size;
} dtype_table[] = {
    [Q3N_ST_F64] = {"F64", 8},        [Q3N_ST_F32] = {"F32", 4},       [Q3N_ST_F16] = {"F16", 2},
    [Q3N_ST_BF16] = {"BF16", 2},      [Q3N_ST_F8_E4M3] = {"F8_E4M3", 1}, [Q3N_ST_F8_E5M2] = {"F8_E5M2", 1},
    [Q3N_ST_I64] = {"I64", 8},        [Q3N_ST_I32] = {"I32", 4},       [Q3N_ST_I16] = {"I16", 2},
    [Q3N_ST_I8] = {"I8", 1},          [Q3N_ST_U64] = {"U64", 8},       [Q3N_ST_U32] = {"U32", 4},
    [Q3N_ST_U16] = {"U16", 2},        [Q3N_ST_U8] = {"U8", 1},         [Q3N_ST_BOOL] = {"BOOL", 1},
};
#define N_DTYPES ((int)(sizeof dtype_table / sizeof dtype_table[0]))

const char *q3n_st_dtype_name(enum q3n_st_dtype dtype)
{
    return (int)dtype >= 0 && (int)dtype < N_DTYPES ? dtype_table[dtype].name : "?";
}

size_t q3n_st_dtype_size(enum q3n_st_dtype dtype)
{
    return (int)dtype >= 0 && (int)dtype < N_DTYPES ? dtype_table[dtype].size : 0;
}

float q3n_bf16_to_f32(uint16_t bits)
{
    uint32_t u = (uint32_t)bits << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float q3n_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
    if (exp == 0 && man == 0) {
        u = sign;
    } else if (exp == 0) { /* subnormal: shift the mantissa up to an implicit 1 */
        uint32_t e = 127 - 15 + 1;
        while (!(man & 0x400u)) {
            man <<= 1;
            e--;
        }
        u = sign | (e << 23) | ((man & 0x3ffu) << 13);
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t q3n_f32_to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                           /* round to nearest even */
    return (uint16_t)(u >> 16);
}

/* float32 -> binary16, round to nearest even (for the writer's F16 option). */
static uint16_t f32_to_f16(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t a = u & 0x7fffffffu;
    if (a > 0x7f800000u) return sign | 0x7e00u;
    if (a >= 0x477ff000u) return sign | 0x7c00u; /* rounds to >= 65520: inf */
    if (a < 0x38800000u) {                       /* below the smallest normal: subnormal or 0 */
        if (a < 0x33000000u) return sign;        /* < 2^-25 rounds to 0 */
        uint32_t man = (a & 0x7fffffu) | 0x800000u;
        int shift = 126 - (int)(a >> 23); /* q = value / 2^-24 */
        uint32_t half = 1u << (shift - 1), rest = man & ((1u << shift) - 1), q = man >> shift;
        if (rest > half || (rest == half && (q & 1u))) q++;
        return sign | (uint16_t)q;
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - ((uint32_t)(127 - 15) << 23);
    return sign | (uint16_t)(r >> 13);
}

/* ---- set bookkeeping ---------------------------------------------------------------------------- */

static enum q3n_status push_tensor(struct q3n_safetensors *set, const struct q3n_st_tensor *t, struct q3n_error *err)
{
    if (set->n == set->cap) {
        int64_t cap = set->cap ? set->cap * 2 : 256;
        struct q3n_st_tensor *grown = realloc(set->tensors, (size_t)cap * sizeof *grown);
        if (!grown) return q3n_error_set(err, Q3N_ERR_NOMEM, "safetensors: out of memory for the tensor list");
        set->tensors = grown;
        set->cap = cap;
    }
    set->tensors[set->n++] = *t;
    return Q3N_OK;
}

void q3n_safetensors_close(struct q3n_safetensors *set)
{
    if (!set) return;
    for (int i = 0; i < set->nshards; i++)
        if (set->shards[i].map) munmap(set->shards[i].map, set->shards[i].size);
    for (int64_t i = 0; i < set->n; i++) free((char *)set->tensors[i].name);
    free(set->shards);
    free(set->tensors);
    free(set->sorted);
    free(set);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp((*(const struct q3n_st_tensor *const *)a)->name, (*(const struct q3n_st_tensor *const *)b)->name);
}

/* Builds the sorted lookup table; duplicates (within or across shards) are format errors. */
static enum q3n_status build_index(struct q3n_safetensors *set, struct q3n_error *err)
{
    free(set->sorted);
    set->sorted = malloc((size_t)(set->n ? set->n : 1) * sizeof *set->sorted);
    if (!set->sorted) return q3n_error_set(err, Q3N_ERR_NOMEM, "safetensors: out of memory for the index");
    for (int64_t i = 0; i < set->n; i++) set->sorted[i] = &set->tensors[i];
    qsort(set->sorted, (size_t)set->n, sizeof *set->sorted, cmp_name);
    for (int64_t i = 1; i < set->n; i++) {
        const struct q3n_st_tensor *a = set->sorted[i - 1], *b = set->sorted[i];
        if (strcmp(a->name, b->name) == 0)
            return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s appears twice (also in %s)",
                                 set->shards[b->shard].path, b->name, set->shards[a->shard].path);
    }
    return Q3N_OK;
}

int64_t q3n_safetensors_count(const struct q3n_safetensors *set)
{
    return set->n;
}

const struct q3n_st_tensor *q3n_safetensors_at(const struct q3n_safetensors *set, int64_t i)
{
    return (i >= 0 && i < set->n) ? &set->tensors[i] : NULL;
}

const struct q3n_st_tensor *q3n_safetensors_find(const struct q3n_safetensors *set, const char *name)
{
    int64_t lo = 0, hi = set->n - 1;
    while (lo <= hi) {
        int64_t mid = lo + (hi - lo) / 2;
        int c = strcmp(set->sorted[mid]->name, name);
        if (c == 0) return set->sorted[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return NULL;
}

int q3n_safetensors_shard_count(const struct q3n_safetensors *set)
{
    return set->nshards;
}

const char *q3n_safetensors_shard_path(const struct q3n_safetensors *set, int shard)
{
    return (shard >= 0 && shard < set->nshards) ? set->shards[shard].path : NULL;
}

/* ---- header parsing ------------------------------------------------------------------------------ */

/* Names with control characters are refused so every later message (and `q3n inspect`'s
 * inventory) stays one printable line; `quoted` makes such text printable for the refusal. */
static int has_control(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return 1;
    return 0;
}

static const char *quoted(const char *s, char *buf, size_t cap)
{
    size_t n = 0;
    for (; s[n] && n + 4 < cap; n++)
        buf[n] = ((unsigned char)s[n] < 0x20 || (unsigned char)s[n] >= 0x7f) ? '?' : s[n];
    if (s[n]) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

/* A JSON number that is a non-negative integer <= 2^53. */
static int json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return 0;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= ST_EXACT_INT) || d != floor(d)) return 0;
    *out = (uint64_t)d;
    return 1;
}

static void format_shape(char *buf, size_t cap, const struct q3n_st_tensor *t)
{
    size_t off = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->rank && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? ", " : "", (long long)t->dims[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
}

/* Parses one header entry into t (name not yet set). */
static enum q3n_status parse_entry(const char *path, const cJSON *e, uint64_t data_size, struct q3n_st_tensor *t,
                                   struct q3n_error *err)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e)) return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: entry is not an object", path, name);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(e, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    if (!cJSON_IsString(dt)) return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: dtype missing", path, name);
    int found = -1;
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(dt->valuestring, dtype_table[i].name) == 0) found = i;
    if (found < 0) {
        char q[40];
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: unknown dtype '%s'", path, name,
                             quoted(dt->valuestring, q, sizeof q));
    }
    t->dtype = (enum q3n_st_dtype)found;
    if (!cJSON_IsArray(shape)) return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: shape missing", path, name);
    int rank = cJSON_GetArraySize(shape);
    if (rank > Q3N_ST_MAX_RANK)
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: rank %d above %d", path, name, rank, Q3N_ST_MAX_RANK);
    t->rank = rank;
    size_t numel = 1, nbytes;
    for (int i = 0; i < rank; i++) {
        uint64_t d;
        if (!json_uint(cJSON_GetArrayItem(shape, i), &d))
            return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: shape[%d] is not a non-negative integer", path,
                                 name, i);
        t->dims[i] = (int64_t)d;
        if (!q3n_mul_size(&numel, numel, (size_t)d))
            return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: element count overflows 64 bits", path, name);
    }
    if (!q3n_mul_size(&nbytes, numel, dtype_table[found].size) || numel > (size_t)INT64_MAX)
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: byte size overflows 64 bits", path, name);
    t->numel = (int64_t)numel;
    uint64_t b, en;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 || !json_uint(cJSON_GetArrayItem(offs, 0), &b) ||
        !json_uint(cJSON_GetArrayItem(offs, 1), &en))
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: data_offsets is not two non-negative integers", path,
                             name);
    if (b > en || en > data_size)
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: data_offsets [%llu, %llu] outside the data area "
                             "of %llu bytes", path, name, (unsigned long long)b, (unsigned long long)en,
                             (unsigned long long)data_size);
    if (en - b != (uint64_t)nbytes) {
        char sh[128];
        format_shape(sh, sizeof sh, t);
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s: shape %s of %s is %zu bytes but data_offsets span "
                             "%llu", path, name, sh, dtype_table[found].name, nbytes, (unsigned long long)(en - b));
    }
    t->offset = b; /* relative for now; made absolute by the caller */
    t->nbytes = en - b;
    return Q3N_OK;
}

static int cmp_offset(const void *a, const void *b)
{
    const struct q3n_st_tensor *x = a, *y = b;
    if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : (x->nbytes > y->nbytes);
}

/* Checks that the shard's tensors [first, set->n) tile the data area exactly. */
static enum q3n_status check_tiling(struct q3n_safetensors *set, int64_t first, uint64_t data_size, const char *path,
                                    struct q3n_error *err)
{
    int64_t n = set->n - first;
    struct q3n_st_tensor *copy = malloc((size_t)(n ? n : 1) * sizeof *copy);
    if (!copy) return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
    if (n > 0) {
        memcpy(copy, set->tensors + first, (size_t)n * sizeof *copy);
        qsort(copy, (size_t)n, sizeof *copy, cmp_offset);
    }
    enum q3n_status st = Q3N_OK;
    uint64_t covered = 0;
    const char *prev = NULL;
    for (int64_t i = 0; i < n; i++) {
        if (copy[i].offset < covered) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s (bytes %llu..%llu) overlaps tensor %s", path,
                               copy[i].name, (unsigned long long)copy[i].offset,
                               (unsigned long long)(copy[i].offset + copy[i].nbytes), prev);
            goto cleanup;
        }
        if (copy[i].offset > covered) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: data bytes %llu..%llu before tensor %s belong to no tensor",
                               path, (unsigned long long)covered, (unsigned long long)copy[i].offset, copy[i].name);
            goto cleanup;
        }
        covered = copy[i].offset + copy[i].nbytes;
        prev = copy[i].name;
    }
    if (covered != data_size)
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: the data area has %llu bytes but the tensors cover %llu", path,
                           (unsigned long long)data_size, (unsigned long long)covered);
cleanup:
    free(copy);
    return st;
}

static int has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int is_pickle_name(const char *s)
{
    return has_suffix(s, ".bin") || has_suffix(s, ".pt") || has_suffix(s, ".pth") || has_suffix(s, ".ckpt") ||
           has_suffix(s, ".pkl");
}

static enum q3n_status pickle_refusal(const char *what, struct q3n_error *err)
{
    return q3n_error_set(err, Q3N_ERR_UNSUPPORTED,
                         "%s: PyTorch pickle weights are refused (q3n never unpickles); convert the checkpoint to "
                         "safetensors, e.g. model.save_pretrained(dir, safe_serialization=True)", what);
}

/* Maps `path` as shard number set->nshards and appends its tensors. */
static enum q3n_status add_shard(struct q3n_safetensors *set, const char *path, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    cJSON *hdr = NULL;
    if (strlen(path) >= ST_PATH_MAX) return q3n_error_set(err, Q3N_ERR_USAGE, "%s: path too long", path);
    if (is_pickle_name(path)) return pickle_refusal(path, err);
    struct shard *grown = realloc(set->shards, (size_t)(set->nshards + 1) * sizeof *grown);
    if (!grown) return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
    set->shards = grown;
    int idx = set->nshards++;
    struct shard *sh = &set->shards[idx];
    memset(sh, 0, sizeof *sh);
    snprintf(sh->path, sizeof sh->path, "%s", path);

    int fd = open(path, O_RDONLY);
    if (fd < 0) return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return q3n_error_set(err, Q3N_ERR_IO, "%s: not a readable regular file", path);
    }
    if (sb.st_size < 8) {
        close(fd);
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %lld bytes: truncated before the 8-byte header length", path,
                             (long long)sb.st_size);
    }
    sh->size = (size_t)sb.st_size;
    void *map = mmap(NULL, sh->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot map: %s", path, strerror(errno));
    sh->map = map;
    const unsigned char *p = map;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | p[i];
    if (hlen > (uint64_t)sh->size - 8)
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: header length %llu runs past the end of the file (%zu bytes)",
                             path, (unsigned long long)hlen, sh->size);
    if (hlen > ST_HEADER_MAX)
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: header length %llu above the %llu-byte limit", path,
                             (unsigned long long)hlen, (unsigned long long)ST_HEADER_MAX);
    if (hlen < 2 || p[8] != '{')
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: header does not start with a JSON object", path);
    hdr = cJSON_ParseWithLength((const char *)p + 8, (size_t)hlen);
    if (!hdr) return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: header is not valid JSON", path);
    if (!cJSON_IsObject(hdr)) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: header is not a JSON object", path);
        goto cleanup;
    }
    uint64_t data_start = 8 + hlen, data_size = (uint64_t)sh->size - data_start;
    int64_t first = set->n;
    for (const cJSON *e = hdr->child; e; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) {
                st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: __metadata__ is not an object", path);
                goto cleanup;
            }
            continue;
        }
        if (has_control(e->string)) {
            char q[96];
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor name '%s' holds control characters", path,
                               quoted(e->string, q, sizeof q));
            goto cleanup;
        }
        struct q3n_st_tensor t;
        memset(&t, 0, sizeof t);
        st = parse_entry(path, e, data_size, &t, err);
        if (st != Q3N_OK) goto cleanup;
        t.data = p + data_start + t.offset;
        t.offset += data_start;
        t.shard = idx;
        t.name = strdup(e->string);
        if (!t.name) {
            st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
            goto cleanup;
        }
        st = push_tensor(set, &t, err);
        if (st != Q3N_OK) {
            free((char *)t.name);
            goto cleanup;
        }
    }
    /* tiling uses offsets relative to the data area */
    for (int64_t i = first; i < set->n; i++) set->tensors[i].offset -= data_start;
    st = check_tiling(set, first, data_size, path, err);
    for (int64_t i = first; i < set->n; i++) set->tensors[i].offset += data_start;
cleanup:
    cJSON_Delete(hdr);
    return st;
}

enum q3n_status q3n_safetensors_open(struct q3n_safetensors **out, const char *path, struct q3n_error *err)
{
    *out = NULL;
    struct q3n_safetensors *set = calloc(1, sizeof *set);
    if (!set) return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
    enum q3n_status st = add_shard(set, path, err);
    if (st == Q3N_OK) st = build_index(set, err);
    if (st != Q3N_OK) {
        q3n_safetensors_close(set);
        return st;
    }
    *out = set;
    return Q3N_OK;
}

/* ---- folders and sharded checkpoints --------------------------------------------------------------- */

static int path_is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

static char *read_small_file(const char *path, long max, long *len, struct q3n_error *err)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    if (!f) {
        q3n_error_set(err, Q3N_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0) n = ftell(f);
    if (n < 0 || n > max) {
        q3n_error_set(err, Q3N_ERR_FORMAT, "%s: size %ld outside 0..%ld bytes", path, n, max);
        goto cleanup;
    }
    rewind(f);
    buf = malloc((size_t)n + 1);
    if (!buf) {
        q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
        goto cleanup;
    }
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        q3n_error_set(err, Q3N_ERR_IO, "%s: short read", path);
        free(buf);
        buf = NULL;
        goto cleanup;
    }
    buf[n] = '\0';
    *len = n;
cleanup:
    fclose(f);
    return buf;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static enum q3n_status open_index(struct q3n_safetensors *set, const char *dir, const char *index_path,
                                  struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    long len = 0;
    const char **names = NULL;
    char *text = read_small_file(index_path, ST_INDEX_MAX, &len, err);
    if (!text) return err ? err->status : Q3N_ERR_IO;
    cJSON *root = cJSON_ParseWithLength(text, (size_t)len);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!root || !cJSON_IsObject(root)) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: not a JSON object", index_path);
        goto cleanup;
    }
    if (!cJSON_IsObject(map)) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: weight_map is missing or not an object", index_path);
        goto cleanup;
    }
    int n = cJSON_GetArraySize(map);
    names = malloc((size_t)(n ? n : 1) * sizeof *names);
    if (!names) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", index_path);
        goto cleanup;
    }
    int k = 0;
    for (const cJSON *e = map->child; e; e = e->next) {
        if (has_control(e->string) || (cJSON_IsString(e) && has_control(e->valuestring))) {
            char q[96];
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: weight_map entry '%s' holds control characters", index_path,
                               quoted(e->string, q, sizeof q));
            goto cleanup;
        }
        if (!cJSON_IsString(e)) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: weight_map[%s] is not a file name", index_path, e->string);
            goto cleanup;
        }
        const char *f = e->valuestring;
        if (!f[0] || strchr(f, '/') || strcmp(f, ".") == 0 || strcmp(f, "..") == 0) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: weight_map[%s] = '%s' is not a file name in the folder",
                               index_path, e->string, f);
            goto cleanup;
        }
        if (is_pickle_name(f)) {
            st = pickle_refusal(index_path, err);
            goto cleanup;
        }
        names[k++] = f;
    }
    qsort(names, (size_t)k, sizeof *names, cmp_str);
    for (int i = 0; i < k; i++) {
        if (i > 0 && strcmp(names[i], names[i - 1]) == 0) continue;
        char path[ST_PATH_MAX];
        if (snprintf(path, sizeof path, "%s/%s", dir, names[i]) >= (int)sizeof path) {
            st = q3n_error_set(err, Q3N_ERR_USAGE, "%s: shard path too long", index_path);
            goto cleanup;
        }
        st = add_shard(set, path, err);
        if (st != Q3N_OK) goto cleanup;
    }
    st = build_index(set, err);
    if (st != Q3N_OK) goto cleanup;
    /* cross-check: weight_map -> shard, and shard -> weight_map */
    for (const cJSON *e = map->child; e; e = e->next) {
        const struct q3n_st_tensor *t = q3n_safetensors_find(set, e->string);
        const char *where = t ? strrchr(set->shards[t->shard].path, '/') + 1 : NULL;
        if (!t || strcmp(where, e->valuestring) != 0) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: weight_map puts %s in %s, which does not hold it", index_path,
                               e->string, e->valuestring);
            goto cleanup;
        }
    }
    /* shard -> weight_map, by binary search over the sorted keys (the 80B index has ~75k) */
    k = 0;
    for (const cJSON *e = map->child; e; e = e->next) names[k++] = e->string;
    qsort(names, (size_t)k, sizeof *names, cmp_str);
    for (int64_t i = 0; i < set->n; i++) {
        const char *key = set->tensors[i].name;
        if (!bsearch(&key, names, (size_t)k, sizeof *names, cmp_str)) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: tensor %s is not in the weight_map of %s",
                               set->shards[set->tensors[i].shard].path, set->tensors[i].name, index_path);
            goto cleanup;
        }
    }
cleanup:
    free(names);
    cJSON_Delete(root);
    free(text);
    return st;
}

/* Looks for pickle weights in a folder that has no safetensors; returns the first name. */
static int find_pickle(const char *dir, char *name, size_t cap)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int found = 0;
    for (struct dirent *e = readdir(d); e && !found; e = readdir(d)) {
        if (is_pickle_name(e->d_name) || strcmp(e->d_name, "pytorch_model.bin.index.json") == 0) {
            snprintf(name, cap, "%s", e->d_name);
            found = 1;
        }
    }
    closedir(d);
    return found;
}

enum q3n_status q3n_safetensors_open_dir(struct q3n_safetensors **out, const char *dir, struct q3n_error *err)
{
    *out = NULL;
    char index_path[ST_PATH_MAX], single[ST_PATH_MAX], pickle[256];
    if (snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir) >= (int)sizeof index_path ||
        snprintf(single, sizeof single, "%s/model.safetensors", dir) >= (int)sizeof single)
        return q3n_error_set(err, Q3N_ERR_USAGE, "%s: path too long", dir);
    struct q3n_safetensors *set = calloc(1, sizeof *set);
    if (!set) return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", dir);
    enum q3n_status st;
    if (path_is_file(index_path)) {
        st = open_index(set, dir, index_path, err);
    } else if (path_is_file(single)) {
        st = add_shard(set, single, err);
        if (st == Q3N_OK) st = build_index(set, err);
    } else if (find_pickle(dir, pickle, sizeof pickle)) {
        char what[ST_PATH_MAX + 300];
        snprintf(what, sizeof what, "%s/%s", dir, pickle);
        st = pickle_refusal(what, err);
    } else {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: no model.safetensors or model.safetensors.index.json", dir);
    }
    if (st != Q3N_OK) {
        q3n_safetensors_close(set);
        return st;
    }
    *out = set;
    return Q3N_OK;
}

/* ---- conversion ------------------------------------------------------------------------------------ */

enum q3n_status q3n_safetensors_to_f32(const struct q3n_safetensors *set, const struct q3n_st_tensor *t, float *out,
                                       struct q3n_error *err)
{
    const char *path = set->shards[t->shard].path;
    const unsigned char *p = t->data;
    switch (t->dtype) {
    case Q3N_ST_F32:
        memcpy(out, p, (size_t)t->numel * 4);
        return Q3N_OK;
    case Q3N_ST_BF16:
    case Q3N_ST_F16:
        /* blocks through an aligned buffer (the mapping may be misaligned; little-endian host),
         * so the bf16 loop is a plain shift the compiler vectorises */
        for (int64_t i0 = 0; i0 < t->numel; i0 += 4096) {
            uint16_t h[4096];
            uint32_t u[4096];
            int64_t m = t->numel - i0 < 4096 ? t->numel - i0 : 4096;
            memcpy(h, p + 2 * i0, (size_t)m * 2);
            if (t->dtype == Q3N_ST_BF16) {
                for (int64_t i = 0; i < m; i++) u[i] = (uint32_t)h[i] << 16;
                memcpy(out + i0, u, (size_t)m * 4);
            } else {
                for (int64_t i = 0; i < m; i++) out[i0 + i] = q3n_f16_to_f32(h[i]);
            }
        }
        return Q3N_OK;
    case Q3N_ST_F64:
        for (int64_t i = 0; i < t->numel; i++) {
            double d;
            memcpy(&d, p + 8 * i, sizeof d);
            float f = (float)d;
            if ((double)f != d && !isnan(d))
                return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "%s: tensor %s: F64 value %.17g at index %lld is not "
                                     "exactly a float32; q3n will not narrow weights silently", path, t->name, d,
                                     (long long)i);
            out[i] = f;
        }
        return Q3N_OK;
    case Q3N_ST_F8_E4M3:
    case Q3N_ST_F8_E5M2:
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "%s: tensor %s: FP8 (%s) weights are not supported yet; use a "
                             "BF16 or F32 checkpoint", path, t->name, q3n_st_dtype_name(t->dtype));
    default:
        return q3n_error_set(err, Q3N_ERR_UNSUPPORTED, "%s: tensor %s: dtype %s is not a float weight type", path,
                             t->name, q3n_st_dtype_name(t->dtype));
    }
}

/* ---- writer ------------------------------------------------------------------------------------------ */

enum q3n_status q3n_safetensors_write(const char *path, const struct q3n_st_write_tensor *tensors, int64_t n,
                                      struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    FILE *f = NULL;
    char *hdr_text = NULL;
    const char **names = malloc((size_t)(n > 0 ? n : 1) * sizeof *names);
    if (!names) return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
    for (int64_t i = 0; i < n; i++) names[i] = tensors[i].name;
    qsort(names, (size_t)n, sizeof *names, cmp_str); /* duplicates found in n log n */
    for (int64_t i = 1; i < n; i++)
        if (strcmp(names[i - 1], names[i]) == 0) {
            st = q3n_error_set(err, Q3N_ERR_USAGE, "%s: tensor %s written twice", path, names[i]);
            free(names);
            return st;
        }
    free(names);
    cJSON *hdr = cJSON_CreateObject();
    cJSON *meta = hdr ? cJSON_AddObjectToObject(hdr, "__metadata__") : NULL;
    int ok = meta && cJSON_AddStringToObject(meta, "format", "pt");
    uint64_t off = 0;
    for (int64_t i = 0; ok && i < n; i++) {
        const struct q3n_st_write_tensor *t = &tensors[i];
        if (t->dtype != Q3N_ST_F32 && t->dtype != Q3N_ST_BF16 && t->dtype != Q3N_ST_F16) {
            st = q3n_error_set(err, Q3N_ERR_USAGE, "%s: tensor %s: the writer stores F32, BF16 or F16 only", path,
                               t->name);
            goto cleanup;
        }
        size_t numel = 1, bytes = 0;
        cJSON *e = cJSON_AddObjectToObject(hdr, t->name); /* owned by hdr from here on */
        ok = e && cJSON_AddStringToObject(e, "dtype", q3n_st_dtype_name(t->dtype));
        cJSON *shape = ok ? cJSON_AddArrayToObject(e, "shape") : NULL;
        cJSON *offs = shape ? cJSON_AddArrayToObject(e, "data_offsets") : NULL;
        ok = offs != NULL;
        for (int d = 0; ok && d < t->rank; d++)
            ok = q3n_mul_size(&numel, numel, (size_t)t->dims[d]) &&
                 cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->dims[d]));
        ok = ok && q3n_mul_size(&bytes, numel, q3n_st_dtype_size(t->dtype));
        ok = ok && cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off)) &&
             cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)(off + bytes)));
        off += bytes;
    }
    if (!ok) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory building the header", path);
        goto cleanup;
    }
    hdr_text = cJSON_PrintUnformatted(hdr);
    if (!hdr_text) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory printing the header", path);
        goto cleanup;
    }
    size_t hlen = strlen(hdr_text), padded = (hlen + 7) / 8 * 8;
    f = fopen(path, "wb");
    if (!f) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot create: %s", path, strerror(errno));
        goto cleanup;
    }
    unsigned char le[8];
    for (int i = 0; i < 8; i++) le[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    ok = fwrite(le, 1, 8, f) == 8 && fwrite(hdr_text, 1, hlen, f) == hlen;
    for (size_t i = hlen; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    for (int64_t i = 0; ok && i < n; i++) {
        const struct q3n_st_write_tensor *t = &tensors[i];
        int64_t numel = 1;
        for (int d = 0; d < t->rank; d++) numel *= t->dims[d];
        if (t->dtype == Q3N_ST_F32) {
            ok = fwrite(t->data, 4, (size_t)numel, f) == (size_t)numel;
            continue;
        }
        uint16_t buf[4096];
        for (int64_t j = 0; ok && j < numel; j += 4096) {
            int64_t m = numel - j < 4096 ? numel - j : 4096;
            for (int64_t k = 0; k < m; k++)
                buf[k] = t->dtype == Q3N_ST_BF16 ? q3n_f32_to_bf16(t->data[j + k]) : f32_to_f16(t->data[j + k]);
            ok = fwrite(buf, 2, (size_t)m, f) == (size_t)m;
        }
    }
    if (fclose(f) != 0) ok = 0;
    f = NULL;
    if (!ok) st = q3n_error_set(err, Q3N_ERR_IO, "%s: write failed: %s", path, strerror(errno));
cleanup:
    if (f) fclose(f);
    free(hdr_text);
    cJSON_Delete(hdr);
    return st;
}
