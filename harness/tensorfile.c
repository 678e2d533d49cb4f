/* tensorfile.c — the q3n HDF5 tensor file; see tensorfile.h and docs/golden-format.md.
 *
 * The only file in q3n that includes hdf5.h. HDF5's automatic error printing is switched
 * off at every open/create; each HDF5 failure becomes a q3n error naming the file and the
 * object. Before any read the dataset's class, element size and rank are checked, because
 * HDF5 would otherwise convert between float sizes (or int and float) silently. */
#include "tensorfile.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <hdf5.h>

#define TF_PATH_MAX 4096
#define TF_CHUNK_THRESHOLD (64 * 1024)  /* bytes: larger datasets are chunked + compressed */
#define TF_CHUNK_TARGET (1024 * 1024)   /* bytes per chunk, about */
#define TF_DTYPE_ATTR "dtype"

struct q3n_tensorfile {
    hid_t file;
    int writer;
    char path[TF_PATH_MAX];
    char tmp[TF_PATH_MAX + 8];
};

/* ---- small helpers ------------------------------------------------------------------- */

static void quiet_hdf5(void)
{
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
}

static float bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: normalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 0x400));
            man &= 0x3ff;
            u = sign | ((uint32_t)(127 - 15 - e) << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* An IEEE binary16 little-endian float type (as h5py writes numpy float16). Caller closes. */
static hid_t make_f16_type(void)
{
    hid_t t = H5Tcopy(H5T_IEEE_F32LE);
    if (t < 0) return -1;
    if (H5Tset_fields(t, 15, 10, 5, 0, 10) < 0 || H5Tset_size(t, 2) < 0 || H5Tset_ebias(t, 15) < 0) {
        H5Tclose(t);
        return -1;
    }
    return t;
}

/* Natural order: runs of digits compare as numbers ("layers.2" < "layers.10"). */
static int natural_cmp(const char *a, const char *b)
{
    while (*a && *b) {
        if (*a >= '0' && *a <= '9' && *b >= '0' && *b <= '9') {
            while (*a == '0') a++;
            while (*b == '0') b++;
            size_t la = 0, lb = 0;
            while (a[la] >= '0' && a[la] <= '9') la++;
            while (b[lb] >= '0' && b[lb] <= '9') lb++;
            if (la != lb) return la < lb ? -1 : 1;
            int c = memcmp(a, b, la);
            if (c) return c;
            a += la;
            b += lb;
        } else {
            if (*a != *b) return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++;
            b++;
        }
    }
    return (*a != 0) - (*b != 0);
}

static int natural_qsort_cmp(const void *pa, const void *pb)
{
    return natural_cmp(*(const char *const *)pa, *(const char *const *)pb);
}

/* 1 when every component of an absolute path exists (H5Lexists needs each prefix). */
static int object_exists(hid_t file, const char *object)
{
    if (!object || object[0] != '/') return 0;
    if (object[1] == '\0') return 1;
    char buf[TF_PATH_MAX];
    size_t n = strlen(object);
    if (n >= sizeof buf) return 0;
    memcpy(buf, object, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char saved = buf[i];
            buf[i] = '\0';
            htri_t e = H5Lexists(file, buf, H5P_DEFAULT);
            buf[i] = saved;
            if (e <= 0) return 0;
            if (saved == '\0') break;
        }
    }
    return H5Oexists_by_name(file, object, H5P_DEFAULT) > 0;
}

/* 1 when `name` (relative to loc) opens as a dataset. H5Iget_type keeps this independent of
 * the H5Oget_info API version the HDF5 build maps to. */
static int is_dataset(hid_t loc, const char *name)
{
    hid_t obj = H5Oopen(loc, name, H5P_DEFAULT);
    if (obj < 0) return 0;
    int yes = H5Iget_type(obj) == H5I_DATASET;
    H5Oclose(obj);
    return yes;
}

static hid_t group_create_plist(void)
{
    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    if (gcpl < 0) return -1;
    if (H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED) < 0) {
        H5Pclose(gcpl);
        return -1;
    }
    return gcpl;
}

/* Creates every missing group on the way to the dataset path's parent. */
static enum q3n_status make_parents(struct q3n_tensorfile *tf, const char *dataset, struct q3n_error *err)
{
    char buf[TF_PATH_MAX];
    size_t n = strlen(dataset);
    if (n >= sizeof buf)
        return q3n_error_set(err, Q3N_ERR_USAGE, "%s: dataset name too long (%zu bytes)", tf->path, n);
    memcpy(buf, dataset, n + 1);
    enum q3n_status st = Q3N_OK;
    hid_t gcpl = group_create_plist();
    if (gcpl < 0) return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot make a group property list", tf->path);
    for (size_t i = 1; i < n; i++) {
        if (buf[i] != '/') continue;
        buf[i] = '\0';
        htri_t e = H5Lexists(tf->file, buf, H5P_DEFAULT);
        if (e < 0) {
            st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot check group %s", tf->path, buf);
            goto done;
        }
        if (e == 0) {
            hid_t g = H5Gcreate2(tf->file, buf, H5P_DEFAULT, gcpl, H5P_DEFAULT);
            if (g < 0) {
                st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot create group %s", tf->path, buf);
                goto done;
            }
            H5Gclose(g);
        }
        buf[i] = '/';
    }
done:
    H5Pclose(gcpl);
    return st;
}

/* ---- open / create / commit / close ------------------------------------------------------- */

enum q3n_status q3n_tensorfile_open(struct q3n_tensorfile **out, const char *path, struct q3n_error *err)
{
    *out = NULL;
    quiet_hdf5();
    if (strlen(path) >= TF_PATH_MAX) return q3n_error_set(err, Q3N_ERR_USAGE, "%s: path too long", path);
    struct stat sb;
    if (stat(path, &sb) != 0)
        return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(sb.st_mode)) return q3n_error_set(err, Q3N_ERR_IO, "%s: not a regular file", path);
    htri_t is = H5Fis_hdf5(path);
    if (is <= 0)
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: not an HDF5 file (no HDF5 signature)", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0)
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: HDF5 file cannot be opened (truncated or corrupt)", path);
    struct q3n_tensorfile *tf = calloc(1, sizeof *tf);
    if (!tf) {
        H5Fclose(f);
        return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
    }
    tf->file = f;
    snprintf(tf->path, sizeof tf->path, "%s", path);
    *out = tf;
    return Q3N_OK;
}

enum q3n_status q3n_tensorfile_create(struct q3n_tensorfile **out, const char *path, struct q3n_error *err)
{
    *out = NULL;
    quiet_hdf5();
    if (strlen(path) >= TF_PATH_MAX) return q3n_error_set(err, Q3N_ERR_USAGE, "%s: path too long", path);
    struct q3n_tensorfile *tf = calloc(1, sizeof *tf);
    if (!tf) return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
    snprintf(tf->path, sizeof tf->path, "%s", path);
    snprintf(tf->tmp, sizeof tf->tmp, "%s.tmp", path);
    tf->writer = 1;
    enum q3n_status st = Q3N_OK;
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    if (fcpl < 0 || H5Pset_link_creation_order(fcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED) < 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot make a file property list", path);
        goto cleanup;
    }
    tf->file = H5Fcreate(tf->tmp, H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
    if (tf->file < 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot create HDF5 file %s", path, tf->tmp);
        goto cleanup;
    }
cleanup:
    if (fcpl >= 0) H5Pclose(fcpl);
    if (st != Q3N_OK) {
        free(tf);
        return st;
    }
    *out = tf;
    return Q3N_OK;
}

enum q3n_status q3n_tensorfile_commit(struct q3n_tensorfile *tf, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    if (!tf->writer) {
        st = q3n_error_set(err, Q3N_ERR_USAGE, "%s: commit on a file opened for reading", tf->path);
        goto cleanup;
    }
    if (H5Fflush(tf->file, H5F_SCOPE_GLOBAL) < 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot flush %s", tf->path, tf->tmp);
        goto cleanup;
    }
    herr_t rc = H5Fclose(tf->file);
    tf->file = -1;
    if (rc < 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot close %s", tf->path, tf->tmp);
        goto cleanup;
    }
    if (rename(tf->tmp, tf->path) != 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot rename %s onto it: %s", tf->path, tf->tmp, strerror(errno));
        goto cleanup;
    }
    tf->writer = 0; /* committed: close must not delete anything */
cleanup:
    q3n_tensorfile_close(tf);
    return st;
}

void q3n_tensorfile_close(struct q3n_tensorfile *tf)
{
    if (!tf) return;
    if (tf->file >= 0) H5Fclose(tf->file);
    if (tf->writer) unlink(tf->tmp);
    free(tf);
}

const char *q3n_tensorfile_path(const struct q3n_tensorfile *tf)
{
    return tf->path;
}

/* ---- writing ------------------------------------------------------------------------------ */

/* The file type for a q3n dtype, and whether a dtype attribute marks it. Caller closes
 * the returned type only when *owned is set. */
static hid_t file_type_of(enum q3n_dtype dtype, const char **marker, int *owned)
{
    *marker = NULL;
    *owned = 0;
    switch (dtype) {
    case Q3N_DTYPE_F32: return H5T_IEEE_F32LE;
    case Q3N_DTYPE_F64: return H5T_IEEE_F64LE;
    case Q3N_DTYPE_I64: return H5T_STD_I64LE;
    case Q3N_DTYPE_U8: return H5T_STD_U8LE;
    case Q3N_DTYPE_BF16: *marker = "bfloat16"; return H5T_STD_U16LE;
    case Q3N_DTYPE_F16: *owned = 1; return make_f16_type();
    }
    return -1;
}

static hid_t mem_type_of(enum q3n_dtype dtype)
{
    switch (dtype) {
    case Q3N_DTYPE_F32: return H5T_NATIVE_FLOAT;
    case Q3N_DTYPE_F64: return H5T_NATIVE_DOUBLE;
    case Q3N_DTYPE_I64: return H5T_NATIVE_INT64;
    case Q3N_DTYPE_U8: return H5T_NATIVE_UINT8;
    case Q3N_DTYPE_BF16: return H5T_NATIVE_UINT16;
    case Q3N_DTYPE_F16: return -1; /* same as the file type; handled by the caller */
    }
    return -1;
}

static enum q3n_status write_string_attr(hid_t obj, const char *name, const char *value)
{
    enum q3n_status st = Q3N_ERR_IO;
    hid_t type = -1, space = -1, attr = -1;
    if (H5Aexists(obj, name) > 0 && H5Adelete(obj, name) < 0) goto cleanup;
    type = H5Tcopy(H5T_C_S1);
    if (type < 0 || H5Tset_size(type, H5T_VARIABLE) < 0 || H5Tset_cset(type, H5T_CSET_UTF8) < 0) goto cleanup;
    space = H5Screate(H5S_SCALAR);
    if (space < 0) goto cleanup;
    attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0) goto cleanup;
    if (H5Awrite(attr, type, &value) < 0) goto cleanup;
    st = Q3N_OK;
cleanup:
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return st;
}

enum q3n_status q3n_tensorfile_write(struct q3n_tensorfile *tf, const char *dataset, enum q3n_dtype dtype,
                                     int rank, const int64_t *dims, const void *data, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    hid_t space = -1, dcpl = -1, dset = -1, ftype = -1;
    int owned = 0;
    const char *marker = NULL;
    if (!tf->writer) return q3n_error_set(err, Q3N_ERR_USAGE, "%s: %s: file is open read-only", tf->path, dataset);
    if (!dataset || dataset[0] != '/')
        return q3n_error_set(err, Q3N_ERR_USAGE, "%s: dataset name '%s' is not an absolute path", tf->path,
                             dataset ? dataset : "(null)");
    if (rank < 0 || rank > Q3N_MAX_RANK)
        return q3n_error_set(err, Q3N_ERR_USAGE, "%s: %s: rank %d outside 0..%d", tf->path, dataset, rank,
                             Q3N_MAX_RANK);
    hsize_t hd[Q3N_MAX_RANK], chunk[Q3N_MAX_RANK];
    size_t esize = q3n_dtype_size(dtype), bytes = esize;
    for (int i = 0; i < rank; i++) {
        if (dims[i] < 0)
            return q3n_error_set(err, Q3N_ERR_USAGE, "%s: %s: negative dim %d", tf->path, dataset, i);
        hd[i] = (hsize_t)dims[i];
        if (!q3n_mul_size(&bytes, bytes, (size_t)dims[i]))
            return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: %s: size overflows", tf->path, dataset);
    }
    if (object_exists(tf->file, dataset))
        return q3n_error_set(err, Q3N_ERR_USAGE, "%s: %s: dataset already written", tf->path, dataset);
    st = make_parents(tf, dataset, err);
    if (st != Q3N_OK) return st;

    space = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, hd, NULL);
    dcpl = H5Pcreate(H5P_DATASET_CREATE);
    ftype = file_type_of(dtype, &marker, &owned);
    if (space < 0 || dcpl < 0 || ftype < 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot make dataspace/type", tf->path, dataset);
        goto cleanup;
    }
    if (rank > 0 && bytes > TF_CHUNK_THRESHOLD) {
        /* Shrink leading dims until a chunk is about TF_CHUNK_TARGET bytes. */
        size_t inner = esize;
        for (int i = 0; i < rank; i++) chunk[i] = hd[i];
        for (int i = rank - 1; i >= 0; i--) {
            if (inner * hd[i] > TF_CHUNK_TARGET) {
                hsize_t c = TF_CHUNK_TARGET / inner;
                chunk[i] = c ? c : 1;
                for (int j = 0; j < i; j++) chunk[j] = 1;
                break;
            }
            inner *= hd[i];
        }
        if (H5Pset_chunk(dcpl, rank, chunk) < 0) {
            st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot set chunking", tf->path, dataset);
            goto cleanup;
        }
        if (H5Zfilter_avail(H5Z_FILTER_SHUFFLE) > 0) H5Pset_shuffle(dcpl);
        if (H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0) H5Pset_deflate(dcpl, 4);
    }
    dset = H5Dcreate2(tf->file, dataset, ftype, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    if (dset < 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot create dataset", tf->path, dataset);
        goto cleanup;
    }
    if (bytes > 0) {
        hid_t mtype = dtype == Q3N_DTYPE_F16 ? ftype : mem_type_of(dtype);
        if (H5Dwrite(dset, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
            st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot write dataset", tf->path, dataset);
            goto cleanup;
        }
    }
    if (marker && write_string_attr(dset, TF_DTYPE_ATTR, marker) != Q3N_OK) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot write attribute dtype", tf->path, dataset);
        goto cleanup;
    }
cleanup:
    if (dset >= 0) H5Dclose(dset);
    if (owned && ftype >= 0) H5Tclose(ftype);
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    return st;
}

enum q3n_status q3n_tensorfile_write_str(struct q3n_tensorfile *tf, const char *dataset, const char *value,
                                         struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    hid_t type = -1, space = -1, dset = -1;
    if (!tf->writer) return q3n_error_set(err, Q3N_ERR_USAGE, "%s: %s: file is open read-only", tf->path, dataset);
    if (!dataset || dataset[0] != '/')
        return q3n_error_set(err, Q3N_ERR_USAGE, "%s: dataset name '%s' is not an absolute path", tf->path,
                             dataset ? dataset : "(null)");
    if (object_exists(tf->file, dataset))
        return q3n_error_set(err, Q3N_ERR_USAGE, "%s: %s: dataset already written", tf->path, dataset);
    st = make_parents(tf, dataset, err);
    if (st != Q3N_OK) return st;
    type = H5Tcopy(H5T_C_S1);
    space = H5Screate(H5S_SCALAR);
    if (type < 0 || space < 0 || H5Tset_size(type, H5T_VARIABLE) < 0 || H5Tset_cset(type, H5T_CSET_UTF8) < 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot make string type", tf->path, dataset);
        goto cleanup;
    }
    dset = H5Dcreate2(tf->file, dataset, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (dset < 0 || H5Dwrite(dset, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, &value) < 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot write string dataset", tf->path, dataset);
        goto cleanup;
    }
cleanup:
    if (dset >= 0) H5Dclose(dset);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return st;
}

/* ---- attributes ------------------------------------------------------------------------------ */

static enum q3n_status open_object(struct q3n_tensorfile *tf, const char *object, hid_t *obj, struct q3n_error *err)
{
    if (!object_exists(tf->file, object))
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: object %s does not exist", tf->path, object ? object : "(null)");
    *obj = H5Oopen(tf->file, object, H5P_DEFAULT);
    if (*obj < 0) return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: cannot open object %s", tf->path, object);
    return Q3N_OK;
}

static enum q3n_status set_attr_num(struct q3n_tensorfile *tf, const char *object, const char *name, hid_t ftype,
                                    hid_t mtype, const void *value, struct q3n_error *err)
{
    hid_t obj = -1, space = -1, attr = -1;
    if (!tf->writer) return q3n_error_set(err, Q3N_ERR_USAGE, "%s: %s: file is open read-only", tf->path, object);
    enum q3n_status st = open_object(tf, object, &obj, err);
    if (st != Q3N_OK) return st;
    if (H5Aexists(obj, name) > 0 && H5Adelete(obj, name) < 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot replace attribute %s", tf->path, object, name);
        goto cleanup;
    }
    space = H5Screate(H5S_SCALAR);
    attr = space < 0 ? -1 : H5Acreate2(obj, name, ftype, space, H5P_DEFAULT, H5P_DEFAULT);
    if (attr < 0 || H5Awrite(attr, mtype, value) < 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot write attribute %s", tf->path, object, name);
        goto cleanup;
    }
cleanup:
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    H5Oclose(obj);
    return st;
}

enum q3n_status q3n_tensorfile_set_attr_str(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            const char *value, struct q3n_error *err)
{
    hid_t obj = -1;
    if (!tf->writer) return q3n_error_set(err, Q3N_ERR_USAGE, "%s: %s: file is open read-only", tf->path, object);
    enum q3n_status st = open_object(tf, object, &obj, err);
    if (st != Q3N_OK) return st;
    if (write_string_attr(obj, name, value) != Q3N_OK)
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot write attribute %s", tf->path, object, name);
    H5Oclose(obj);
    return st;
}

enum q3n_status q3n_tensorfile_set_attr_f64(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            double value, struct q3n_error *err)
{
    return set_attr_num(tf, object, name, H5T_IEEE_F64LE, H5T_NATIVE_DOUBLE, &value, err);
}

enum q3n_status q3n_tensorfile_set_attr_i64(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            int64_t value, struct q3n_error *err)
{
    return set_attr_num(tf, object, name, H5T_STD_I64LE, H5T_NATIVE_INT64, &value, err);
}

/* Opens attribute `name` of `object`; missing is Q3N_ERR_FORMAT. */
static enum q3n_status open_attr(struct q3n_tensorfile *tf, const char *object, const char *name, hid_t *obj,
                                 hid_t *attr, struct q3n_error *err)
{
    *attr = -1;
    enum q3n_status st = open_object(tf, object, obj, err);
    if (st != Q3N_OK) return st;
    if (H5Aexists(*obj, name) <= 0) {
        H5Oclose(*obj);
        *obj = -1;
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: attribute %s is missing", tf->path, object, name);
    }
    *attr = H5Aopen(*obj, name, H5P_DEFAULT);
    if (*attr < 0) {
        H5Oclose(*obj);
        *obj = -1;
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: cannot open attribute %s", tf->path, object, name);
    }
    return Q3N_OK;
}

/* Variable-length reads of datasets go through this allocator: nothing larger than the
 * file itself can be a genuine string of it. */
struct vlen_cap {
    size_t limit;
};

static void *capped_alloc(size_t size, void *info)
{
    const struct vlen_cap *cap = info;
    return size <= cap->limit ? malloc(size ? size : 1) : NULL;
}

static void capped_free(void *mem, void *info)
{
    (void)info;
    free(mem);
}

static size_t vlen_limit(hid_t obj)
{
    hsize_t size = 0;
    hid_t f = H5Iget_file_id(obj);
    if (f >= 0) {
        if (H5Fget_filesize(f, &size) < 0) size = 0;
        H5Fclose(f);
    }
    return (size_t)size + 1;
}

/* The length a one-element variable-length string dataset claims, read from the file itself
 * before libhdf5 reads the string: libhdf5 1.10 allocates a conversion buffer of the claimed
 * length (H5T__conv_vlen) before any allocator of ours is asked, so a corrupt length of 4 GB is a
 * 4 GB allocation (harness/testdata/bad/h5_config_vlen_length_4GB.h5, found by the tensorfile
 * fuzzer). A contiguous dataset's raw data is the vlen element: a 4-byte little-endian sequence
 * length, then the global heap address (sizeof_addr bytes) and object index (4 bytes). Returns 1
 * and sets *len when the layout allows reading it (contiguous, one element, stored), else 0
 * (compact or chunked storage: libhdf5 alone reads those). */
static int vlen_claimed_length(hid_t dset, const char *file, uint64_t *len)
{
    int found = 0;
    hid_t dcpl = H5Dget_create_plist(dset);
    const haddr_t off = H5Dget_offset(dset);
    if (dcpl >= 0 && H5Pget_layout(dcpl) == H5D_CONTIGUOUS && off != HADDR_UNDEF && H5Dget_storage_size(dset) >= 8) {
        FILE *fp = fopen(file, "rb");
        unsigned char b[4];
        if (fp && fseeko(fp, (off_t)off, SEEK_SET) == 0 && fread(b, 1, 4, fp) == 4) {
            *len = (uint64_t)b[0] | (uint64_t)b[1] << 8 | (uint64_t)b[2] << 16 | (uint64_t)b[3] << 24;
            found = 1;
        }
        if (fp) fclose(fp);
    }
    if (dcpl >= 0) H5Pclose(dcpl);
    return found;
}

/* Reads a scalar (or 1-element) string from an attribute (is_attr) or dataset into a
 * malloc'd, NUL-terminated buffer. Handles variable-length and fixed-size strings. */
static enum q3n_status read_string(hid_t h, int is_attr, const char *file, const char *what, char **out,
                                   struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    hid_t type = is_attr ? H5Aget_type(h) : H5Dget_type(h);
    hid_t space = is_attr ? H5Aget_space(h) : H5Dget_space(h);
    hid_t mtype = -1;
    char *buf = NULL;
    *out = NULL;
    if (type < 0 || space < 0) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: cannot read type", file, what);
        goto cleanup;
    }
    if (H5Tget_class(type) != H5T_STRING) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: expected a string", file, what);
        goto cleanup;
    }
    if (H5Sget_simple_extent_npoints(space) != 1) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: expected one string, found %lld", file, what,
                           (long long)H5Sget_simple_extent_npoints(space));
        goto cleanup;
    }
    mtype = H5Tcopy(H5T_C_S1);
    if (mtype < 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot make string type", file, what);
        goto cleanup;
    }
    if (H5Tis_variable_str(type) > 0) {
        char *vs = NULL;
        herr_t rc = -1;
        if (H5Tset_size(mtype, H5T_VARIABLE) < 0 || H5Tset_cset(mtype, H5Tget_cset(type)) < 0) {
            st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot make string type", file, what);
            goto cleanup;
        }
        uint64_t claimed = 0;
        if (!is_attr && vlen_claimed_length(h, file, &claimed) && claimed >= vlen_limit(h)) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: the string claims %llu bytes, more than the file holds",
                               file, what, (unsigned long long)claimed);
            goto cleanup;
        }
        if (is_attr) {
            rc = H5Aread(h, mtype, &vs);
        } else {
            /* A corrupt file can claim any length: allocate through a capped allocator so a
             * length beyond the file's size fails the read instead of allocating it. */
            struct vlen_cap cap = {vlen_limit(h)};
            hid_t dxpl = H5Pcreate(H5P_DATASET_XFER);
            if (dxpl >= 0 && H5Pset_vlen_mem_manager(dxpl, capped_alloc, &cap, capped_free, NULL) >= 0)
                rc = H5Dread(h, mtype, H5S_ALL, H5S_ALL, dxpl, &vs);
            if (dxpl >= 0) H5Pclose(dxpl);
        }
        if (rc < 0) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: cannot read string (corrupt or longer than the file)",
                               file, what);
            goto cleanup;
        }
        buf = strdup(vs ? vs : "");
        if (vs && is_attr) H5free_memory(vs);
        if (vs && !is_attr) free(vs);
    } else {
        size_t n = H5Tget_size(type);
        if (n == 0 || n > (size_t)1 << 30) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: bad string size %zu", file, what, n);
            goto cleanup;
        }
        buf = calloc(n + 1, 1);
        if (!buf || H5Tset_size(mtype, n) < 0 || H5Tset_strpad(mtype, H5T_STR_NULLPAD) < 0) {
            st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: %s: out of memory", file, what);
            goto cleanup;
        }
        if ((is_attr ? H5Aread(h, mtype, buf) : H5Dread(h, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf)) < 0) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: cannot read string", file, what);
            goto cleanup;
        }
        buf[n] = '\0';
    }
    if (!buf) st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: %s: out of memory", file, what);
cleanup:
    if (mtype >= 0) H5Tclose(mtype);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (st == Q3N_OK)
        *out = buf;
    else
        free(buf);
    return st;
}

enum q3n_status q3n_tensorfile_get_attr_str(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            char *out, size_t cap, struct q3n_error *err)
{
    hid_t obj, attr;
    char what[TF_PATH_MAX + 64];
    char *s = NULL;
    snprintf(what, sizeof what, "%s attribute %s", object, name);
    enum q3n_status st = open_attr(tf, object, name, &obj, &attr, err);
    if (st != Q3N_OK) return st;
    st = read_string(attr, 1, tf->path, what, &s, err);
    if (st == Q3N_OK) {
        size_t n = strlen(s);
        if (n + 1 > cap)
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s is %zu bytes, more than the %zu allowed", tf->path,
                               what, n, cap ? cap - 1 : 0);
        else
            memcpy(out, s, n + 1);
    }
    free(s);
    H5Aclose(attr);
    H5Oclose(obj);
    return st;
}

/* Reads a numeric scalar attribute after checking its class: integer attributes read as
 * int64 (and as double when want_float, exactly for |v| < 2^53); float attributes only as double. */
static enum q3n_status get_attr_num(struct q3n_tensorfile *tf, const char *object, const char *name, int want_float,
                                    void *out, struct q3n_error *err)
{
    hid_t obj, attr, type = -1, space = -1;
    enum q3n_status st = open_attr(tf, object, name, &obj, &attr, err);
    if (st != Q3N_OK) return st;
    type = H5Aget_type(attr);
    space = H5Aget_space(attr);
    H5T_class_t cls = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    if (space < 0 || H5Sget_simple_extent_npoints(space) != 1) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: attribute %s is not a scalar", tf->path, object, name);
        goto cleanup;
    }
    if (cls == H5T_INTEGER) {
        int64_t v;
        if (H5Aread(attr, H5T_NATIVE_INT64, &v) < 0) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: cannot read attribute %s", tf->path, object, name);
            goto cleanup;
        }
        if (want_float)
            *(double *)out = (double)v;
        else
            *(int64_t *)out = v;
    } else if (cls == H5T_FLOAT && want_float) {
        if (H5Aread(attr, H5T_NATIVE_DOUBLE, out) < 0) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: cannot read attribute %s", tf->path, object, name);
            goto cleanup;
        }
    } else {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: attribute %s is not %s", tf->path, object, name,
                           want_float ? "a number" : "an integer");
        goto cleanup;
    }
cleanup:
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    H5Aclose(attr);
    H5Oclose(obj);
    return st;
}

enum q3n_status q3n_tensorfile_get_attr_f64(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            double *out, struct q3n_error *err)
{
    return get_attr_num(tf, object, name, 1, out, err);
}

enum q3n_status q3n_tensorfile_get_attr_i64(struct q3n_tensorfile *tf, const char *object, const char *name,
                                            int64_t *out, struct q3n_error *err)
{
    return get_attr_num(tf, object, name, 0, out, err);
}

int q3n_tensorfile_exists(struct q3n_tensorfile *tf, const char *object)
{
    return object_exists(tf->file, object);
}

/* ---- reading datasets ------------------------------------------------------------------------- */

static enum q3n_status open_dataset(struct q3n_tensorfile *tf, const char *dataset, hid_t *dset, struct q3n_error *err)
{
    *dset = -1;
    if (!object_exists(tf->file, dataset))
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: dataset %s is missing", tf->path,
                             dataset ? dataset : "(null)");
    if (!is_dataset(tf->file, dataset))
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s is not a dataset", tf->path, dataset);
    *dset = H5Dopen2(tf->file, dataset, H5P_DEFAULT);
    if (*dset < 0) return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: cannot open dataset %s", tf->path, dataset);
    return Q3N_OK;
}

/* Fills info from an open dataset; checks class/size/sign, rank and the element count. */
static enum q3n_status dataset_info(struct q3n_tensorfile *tf, const char *dataset, hid_t dset,
                                    struct q3n_tensor_info *info, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    hid_t type = H5Dget_type(dset), space = H5Dget_space(dset);
    char *marker = NULL;
    memset(info, 0, sizeof *info);
    if (type < 0 || space < 0) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: cannot read type or dataspace", tf->path, dataset);
        goto cleanup;
    }
    H5S_class_t scls = H5Sget_simple_extent_type(space);
    if (scls != H5S_SCALAR && scls != H5S_SIMPLE) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: empty or unknown dataspace", tf->path, dataset);
        goto cleanup;
    }
    int rank = H5Sget_simple_extent_ndims(space);
    if (rank < 0 || rank > Q3N_MAX_RANK) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: rank %d outside 0..%d", tf->path, dataset, rank,
                           Q3N_MAX_RANK);
        goto cleanup;
    }
    hsize_t hd[Q3N_MAX_RANK];
    if (rank > 0 && H5Sget_simple_extent_dims(space, hd, NULL) < 0) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: cannot read dims", tf->path, dataset);
        goto cleanup;
    }
    size_t n = 1;
    info->rank = rank;
    for (int i = 0; i < rank; i++) {
        if (hd[i] > (hsize_t)INT64_MAX || !q3n_mul_size(&n, n, (size_t)hd[i])) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: element count overflows", tf->path, dataset);
            goto cleanup;
        }
        info->dims[i] = (int64_t)hd[i];
    }
    info->numel = (int64_t)n;
    H5T_class_t cls = H5Tget_class(type);
    size_t size = H5Tget_size(type);
    if (H5Aexists(dset, TF_DTYPE_ATTR) > 0) {
        hid_t attr = H5Aopen(dset, TF_DTYPE_ATTR, H5P_DEFAULT);
        if (attr < 0) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: cannot open attribute dtype", tf->path, dataset);
            goto cleanup;
        }
        st = read_string(attr, 1, tf->path, dataset, &marker, err);
        H5Aclose(attr);
        if (st != Q3N_OK) goto cleanup;
    }
    if (marker && strcmp(marker, "bfloat16") == 0 && !(cls == H5T_INTEGER && size == 2)) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: attribute dtype='bfloat16' on a dataset that is not 16-bit "
                           "integers (HDF5 class %d, %zu bytes)", tf->path, dataset, (int)cls, size);
        goto cleanup;
    }
    if (cls == H5T_FLOAT && size == 4) {
        info->dtype = Q3N_DTYPE_F32;
    } else if (cls == H5T_FLOAT && size == 8) {
        info->dtype = Q3N_DTYPE_F64;
    } else if (cls == H5T_FLOAT && size == 2) {
        info->dtype = Q3N_DTYPE_F16;
    } else if (cls == H5T_INTEGER && size == 8 && H5Tget_sign(type) == H5T_SGN_2) {
        info->dtype = Q3N_DTYPE_I64;
    } else if (cls == H5T_INTEGER && size == 1 && H5Tget_sign(type) == H5T_SGN_NONE) {
        info->dtype = Q3N_DTYPE_U8;
    } else if (cls == H5T_INTEGER && size == 2 && marker && strcmp(marker, "bfloat16") == 0) {
        info->dtype = Q3N_DTYPE_BF16;
    } else {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: unsupported element type (HDF5 class %d, %zu bytes%s%s)",
                           tf->path, dataset, (int)cls, size, marker ? ", dtype=" : "", marker ? marker : "");
        goto cleanup;
    }
    if (cls == H5T_FLOAT && H5Tget_order(type) != H5T_ORDER_LE) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: big-endian floats are not supported", tf->path, dataset);
        goto cleanup;
    }
cleanup:
    free(marker);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return st;
}

enum q3n_status q3n_tensorfile_info(struct q3n_tensorfile *tf, const char *dataset, struct q3n_tensor_info *info,
                                    struct q3n_error *err)
{
    hid_t dset;
    enum q3n_status st = open_dataset(tf, dataset, &dset, err);
    if (st != Q3N_OK) return st;
    st = dataset_info(tf, dataset, dset, info, err);
    H5Dclose(dset);
    return st;
}

static int is_float_dtype(enum q3n_dtype d)
{
    return d == Q3N_DTYPE_F32 || d == Q3N_DTYPE_F64 || d == Q3N_DTYPE_BF16 || d == Q3N_DTYPE_F16;
}

/* Reads `count` elements starting at row0 (count covers whole rows; row0 = -1: everything)
 * of dataset with info `in` into out as dtype `as`, converting explicitly. */
static enum q3n_status read_converted(struct q3n_tensorfile *tf, const char *dataset, hid_t dset,
                                      const struct q3n_tensor_info *in, enum q3n_dtype as, int64_t row0,
                                      int64_t nrows, int64_t count, void *out, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    hid_t fspace = -1, mspace = -1, ftype = -1;
    uint16_t *tmp16 = NULL;
    if (as != Q3N_DTYPE_F32 && as != Q3N_DTYPE_F64 && as != Q3N_DTYPE_I64)
        return q3n_error_set(err, Q3N_ERR_USAGE, "%s: %s: can read only as float32, float64 or int64", tf->path,
                             dataset);
    int src_float = is_float_dtype(in->dtype), dst_float = as != Q3N_DTYPE_I64;
    if (src_float != dst_float)
        return q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: dtype is %s, cannot read as %s", tf->path, dataset,
                             q3n_dtype_name(in->dtype), q3n_dtype_name(as));
    if (count == 0) return Q3N_OK;
    fspace = H5S_ALL;
    mspace = H5S_ALL;
    if (row0 >= 0) {
        hsize_t start[Q3N_MAX_RANK] = {0}, cnt[Q3N_MAX_RANK];
        for (int i = 0; i < in->rank; i++) cnt[i] = (hsize_t)in->dims[i];
        start[0] = (hsize_t)row0;
        cnt[0] = (hsize_t)nrows;
        fspace = H5Dget_space(dset);
        hsize_t mdim = (hsize_t)count;
        mspace = H5Screate_simple(1, &mdim, NULL);
        if (fspace < 0 || mspace < 0 || H5Sselect_hyperslab(fspace, H5S_SELECT_SET, start, NULL, cnt, NULL) < 0) {
            st = q3n_error_set(err, Q3N_ERR_IO, "%s: %s: cannot select rows", tf->path, dataset);
            goto cleanup;
        }
    }
    herr_t rc;
    if (in->dtype == Q3N_DTYPE_BF16 || in->dtype == Q3N_DTYPE_F16) {
        tmp16 = malloc((size_t)count * sizeof *tmp16);
        if (!tmp16) {
            st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: %s: out of memory", tf->path, dataset);
            goto cleanup;
        }
        ftype = H5Dget_type(dset);
        hid_t mtype = in->dtype == Q3N_DTYPE_BF16 ? H5T_NATIVE_UINT16 : ftype;
        rc = ftype < 0 ? -1 : H5Dread(dset, mtype, mspace, fspace, H5P_DEFAULT, tmp16);
        if (rc >= 0) {
            for (int64_t i = 0; i < count; i++) {
                float v = in->dtype == Q3N_DTYPE_BF16 ? bf16_to_f32(tmp16[i]) : f16_to_f32(tmp16[i]);
                if (as == Q3N_DTYPE_F32)
                    ((float *)out)[i] = v;
                else
                    ((double *)out)[i] = v;
            }
        }
    } else {
        rc = H5Dread(dset, mem_type_of(as), mspace, fspace, H5P_DEFAULT, out);
    }
    if (rc < 0) st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s: read failed (corrupt data?)", tf->path, dataset);
cleanup:
    free(tmp16);
    if (ftype >= 0) H5Tclose(ftype);
    if (mspace != H5S_ALL && mspace >= 0) H5Sclose(mspace);
    if (fspace != H5S_ALL && fspace >= 0) H5Sclose(fspace);
    return st;
}

static void format_dims(char *buf, size_t cap, int rank, const int64_t *dims)
{
    size_t off = 0;
    off += (size_t)snprintf(buf + off, cap - off, "[");
    for (int i = 0; i < rank && off < cap; i++)
        off += (size_t)snprintf(buf + off, cap - off, "%s%lld", i ? "," : "", (long long)dims[i]);
    if (off < cap) snprintf(buf + off, cap - off, "]");
}

enum q3n_status q3n_tensorfile_read(struct q3n_tensorfile *tf, const char *dataset, enum q3n_dtype as, void *out,
                                    int64_t capacity, const struct q3n_tensor_info *expect, struct q3n_error *err)
{
    hid_t dset;
    struct q3n_tensor_info in;
    enum q3n_status st = open_dataset(tf, dataset, &dset, err);
    if (st != Q3N_OK) return st;
    st = dataset_info(tf, dataset, dset, &in, err);
    if (st != Q3N_OK) goto cleanup;
    if (expect) {
        int same = expect->rank == in.rank;
        for (int i = 0; same && i < in.rank; i++) same = expect->dims[i] == in.dims[i];
        if (!same) {
            char got[96], want[96];
            format_dims(got, sizeof got, in.rank, in.dims);
            format_dims(want, sizeof want, expect->rank, expect->dims);
            st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: shape %s, expected %s", tf->path, dataset, got, want);
            goto cleanup;
        }
        if (is_float_dtype(expect->dtype) != is_float_dtype(in.dtype)) {
            st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: dtype %s, expected %s", tf->path, dataset,
                               q3n_dtype_name(in.dtype), q3n_dtype_name(expect->dtype));
            goto cleanup;
        }
    }
    if (in.numel > capacity) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: %lld elements do not fit the %lld-element buffer", tf->path,
                           dataset, (long long)in.numel, (long long)capacity);
        goto cleanup;
    }
    st = read_converted(tf, dataset, dset, &in, as, -1, 0, in.numel, out, err);
cleanup:
    H5Dclose(dset);
    return st;
}

enum q3n_status q3n_tensorfile_read_rows(struct q3n_tensorfile *tf, const char *dataset, enum q3n_dtype as,
                                         int64_t row0, int64_t nrows, void *out, int64_t capacity,
                                         struct q3n_error *err)
{
    hid_t dset;
    struct q3n_tensor_info in;
    enum q3n_status st = open_dataset(tf, dataset, &dset, err);
    if (st != Q3N_OK) return st;
    st = dataset_info(tf, dataset, dset, &in, err);
    if (st != Q3N_OK) goto cleanup;
    if (in.rank < 1) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: a scalar has no rows", tf->path, dataset);
        goto cleanup;
    }
    if (row0 < 0 || nrows < 0 || row0 > in.dims[0] || nrows > in.dims[0] - row0) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: rows [%lld, %lld) outside [0, %lld)", tf->path, dataset,
                           (long long)row0, (long long)(row0 + nrows), (long long)in.dims[0]);
        goto cleanup;
    }
    int64_t per_row = in.dims[0] ? in.numel / in.dims[0] : 0;
    int64_t count = per_row * nrows;
    if (count > capacity) {
        st = q3n_error_set(err, Q3N_ERR_SHAPE, "%s: %s: %lld elements do not fit the %lld-element buffer", tf->path,
                           dataset, (long long)count, (long long)capacity);
        goto cleanup;
    }
    st = read_converted(tf, dataset, dset, &in, as, row0, nrows, count, out, err);
cleanup:
    H5Dclose(dset);
    return st;
}

enum q3n_status q3n_tensorfile_read_str(struct q3n_tensorfile *tf, const char *dataset, char **out,
                                        struct q3n_error *err)
{
    hid_t dset;
    *out = NULL;
    enum q3n_status st = open_dataset(tf, dataset, &dset, err);
    if (st != Q3N_OK) return st;
    st = read_string(dset, 0, tf->path, dataset, out, err);
    H5Dclose(dset);
    return st;
}

/* ---- listing --------------------------------------------------------------------------------- */

struct name_list {
    char **names;
    size_t n, cap;
    int failed;
    int bad_name;
};

static herr_t collect_dataset(hid_t group, const char *name, const H5L_info_t *linfo, void *user)
{
    (void)linfo;
    struct name_list *list = user;
    if (!is_dataset(group, name)) return 0; /* a group, a named type or a dangling link */
    for (const unsigned char *c = (const unsigned char *)name; *c; c++)
        if (*c < 0x20 || *c == 0x7f) {
            list->bad_name = 1; /* refused by the caller: names end up in one-line messages */
            return 0;
        }
    if (list->n == list->cap) {
        size_t cap = list->cap ? list->cap * 2 : 64;
        char **grown = realloc(list->names, cap * sizeof *grown);
        if (!grown) {
            list->failed = 1;
            return -1;
        }
        list->names = grown;
        list->cap = cap;
    }
    list->names[list->n] = strdup(name);
    if (!list->names[list->n]) {
        list->failed = 1;
        return -1;
    }
    list->n++;
    return 0;
}

enum q3n_status q3n_tensorfile_list(struct q3n_tensorfile *tf, const char *group, q3n_tensorfile_visit_fn fn,
                                    void *user, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    struct name_list list = {0};
    hid_t g = -1, gcpl = -1;
    if (!object_exists(tf->file, group))
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: group %s is missing", tf->path, group ? group : "(null)");
    g = H5Gopen2(tf->file, group, H5P_DEFAULT);
    if (g < 0) return q3n_error_set(err, Q3N_ERR_FORMAT, "%s: %s is not a group", tf->path, group);
    unsigned flags = 0;
    gcpl = H5Gget_create_plist(g);
    if (gcpl < 0 || H5Pget_link_creation_order(gcpl, &flags) < 0) flags = 0;
    int by_order = (flags & H5P_CRT_ORDER_TRACKED) != 0;
    hsize_t idx = 0;
    herr_t rc = H5Literate(g, by_order ? H5_INDEX_CRT_ORDER : H5_INDEX_NAME, H5_ITER_INC, &idx, collect_dataset,
                           &list);
    if (rc < 0 && by_order && !list.failed) {
        /* Tracked but not indexed: HDF5 cannot iterate by creation order; fall back to names. */
        for (size_t i = 0; i < list.n; i++) free(list.names[i]);
        list.n = 0;
        idx = 0;
        by_order = 0;
        rc = H5Literate(g, H5_INDEX_NAME, H5_ITER_INC, &idx, collect_dataset, &list);
    }
    if (rc < 0) {
        st = q3n_error_set(err, list.failed ? Q3N_ERR_NOMEM : Q3N_ERR_FORMAT, "%s: cannot list group %s", tf->path,
                           group);
        goto cleanup;
    }
    if (list.bad_name) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: group %s holds a dataset name with control characters", tf->path,
                           group);
        goto cleanup;
    }
    if (!by_order && list.n > 1) qsort(list.names, list.n, sizeof *list.names, natural_qsort_cmp);
    for (size_t i = 0; i < list.n; i++) {
        st = fn(user, list.names[i], err);
        if (st != Q3N_OK) goto cleanup;
    }
cleanup:
    for (size_t i = 0; i < list.n; i++) free(list.names[i]);
    free(list.names);
    if (gcpl >= 0) H5Pclose(gcpl);
    if (g >= 0) H5Gclose(g);
    return st;
}
