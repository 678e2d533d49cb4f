/* policy.c — parsing and lookup of tolerance policy files; see policy.h. */
#include "policy.h"

#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PATTERN_MAX 200
#define DTYPE_MAX 16

enum key_bit {
    K_KIND = 1 << 0,
    K_RTOL = 1 << 1,
    K_ATOL = 1 << 2,
    K_SMALL = 1 << 3,
    K_REL_L2 = 1 << 4,
    K_MARGIN = 1 << 5,
    K_NEAR_TIE = 1 << 6,
    K_ORACLE_K = 1 << 7,
    K_ORACLE_FLOOR = 1 << 8
};

struct rule {
    char pattern[PATTERN_MAX];
    char dtype[DTYPE_MAX];
    unsigned set;           /* enum key_bit */
    struct q3n_tolerance v; /* values of the keys in `set` */
    int line;
    char reason[Q3N_POLICY_REASON_MAX];
};

struct q3n_policy {
    char source[1024];
    struct rule *rules;
    int n, cap;
};

const char *q3n_tensor_kind_name(enum q3n_tensor_kind kind)
{
    switch (kind) {
    case Q3N_KIND_FLOAT: return "float";
    case Q3N_KIND_TOPK: return "topk";
    case Q3N_KIND_EXACT: return "exact";
    case Q3N_KIND_SKIP: return "skip";
    }
    return "unknown";
}

static int parse_number(const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end != '\0' || errno != 0 || !isfinite(v) || v < 0) return 0;
    *out = v;
    return 1;
}

static enum q3n_status parse_kv(struct rule *r, const char *tok, const char *source, int line,
                                struct q3n_error *err)
{
    const char *eq = strchr(tok, '=');
    if (!eq || eq == tok || eq[1] == '\0')
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s:%d: expected key=value, got '%s'", source, line, tok);
    char key[32];
    size_t klen = (size_t)(eq - tok);
    if (klen >= sizeof key)
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s:%d: unknown key in '%s'", source, line, tok);
    memcpy(key, tok, klen);
    key[klen] = '\0';
    const char *val = eq + 1;
    if (strcmp(key, "kind") == 0) {
        if (strcmp(val, "float") == 0)
            r->v.kind = Q3N_KIND_FLOAT;
        else if (strcmp(val, "topk") == 0)
            r->v.kind = Q3N_KIND_TOPK;
        else if (strcmp(val, "exact") == 0)
            r->v.kind = Q3N_KIND_EXACT;
        else if (strcmp(val, "skip") == 0)
            r->v.kind = Q3N_KIND_SKIP;
        else
            return q3n_error_set(err, Q3N_ERR_FORMAT, "%s:%d: kind must be float, topk, exact or skip, got '%s'",
                                 source, line, val);
        r->set |= K_KIND;
        return Q3N_OK;
    }
    if (strcmp(key, "near_tie") == 0) {
        if (strcmp(val, "report") == 0)
            r->v.near_tie_report = 1;
        else if (strcmp(val, "fail") == 0)
            r->v.near_tie_report = 0;
        else
            return q3n_error_set(err, Q3N_ERR_FORMAT, "%s:%d: near_tie must be report or fail, got '%s'", source,
                                 line, val);
        r->set |= K_NEAR_TIE;
        return Q3N_OK;
    }
    static const struct {
        const char *name;
        unsigned bit;
        size_t off;
    } nums[] = {
        {"rtol", K_RTOL, offsetof(struct q3n_tolerance, rtol)},
        {"atol", K_ATOL, offsetof(struct q3n_tolerance, atol)},
        {"small", K_SMALL, offsetof(struct q3n_tolerance, small)},
        {"rel_l2", K_REL_L2, offsetof(struct q3n_tolerance, rel_l2)},
        {"margin", K_MARGIN, offsetof(struct q3n_tolerance, margin)},
        {"oracle_k", K_ORACLE_K, offsetof(struct q3n_tolerance, oracle_k)},
        {"oracle_floor", K_ORACLE_FLOOR, offsetof(struct q3n_tolerance, oracle_floor)},
    };
    for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
        if (strcmp(key, nums[i].name) != 0) continue;
        double v;
        if (!parse_number(val, &v))
            return q3n_error_set(err, Q3N_ERR_FORMAT, "%s:%d: %s must be a finite number >= 0, got '%s'", source,
                                 line, key, val);
        memcpy((char *)&r->v + nums[i].off, &v, sizeof v);
        r->set |= nums[i].bit;
        return Q3N_OK;
    }
    return q3n_error_set(err, Q3N_ERR_FORMAT, "%s:%d: unknown key '%s'", source, line, key);
}

static enum q3n_status parse_line(struct rule *r, char *text, const char *source, int line, int *is_rule,
                                  struct q3n_error *err)
{
    *is_rule = 0;
    memset(r, 0, sizeof *r);
    r->line = line;
    char *hash = strchr(text, '#');
    if (hash) {
        *hash = '\0';
        const char *reason = hash + 1;
        while (*reason == ' ' || *reason == '\t') reason++;
        snprintf(r->reason, sizeof r->reason, "%s", reason);
        size_t rl = strlen(r->reason);
        while (rl > 0 && (r->reason[rl - 1] == ' ' || r->reason[rl - 1] == '\r')) r->reason[--rl] = '\0';
    }
    int ntok = 0;
    char *save = NULL;
    for (char *tok = strtok_r(text, " \t\r", &save); tok; tok = strtok_r(NULL, " \t\r", &save), ntok++) {
        if (ntok == 0) {
            if (strlen(tok) >= sizeof r->pattern)
                return q3n_error_set(err, Q3N_ERR_FORMAT, "%s:%d: pattern longer than %d characters", source, line,
                                     PATTERN_MAX - 1);
            strcpy(r->pattern, tok);
        } else if (ntok == 1) {
            if (strcmp(tok, "*") != 0 && strcmp(tok, "float32") != 0 && strcmp(tok, "bfloat16") != 0 &&
                strcmp(tok, "float64") != 0 && strcmp(tok, "float16") != 0)
                return q3n_error_set(err, Q3N_ERR_FORMAT,
                                     "%s:%d: dtype must be float32, bfloat16, float16, float64 or *, got '%s'",
                                     source, line, tok);
            strcpy(r->dtype, tok);
        } else {
            enum q3n_status st = parse_kv(r, tok, source, line, err);
            if (st != Q3N_OK) return st;
        }
    }
    if (ntok == 0) return Q3N_OK;
    if (ntok < 3)
        return q3n_error_set(err, Q3N_ERR_FORMAT, "%s:%d: expected '<glob> <dtype> key=value ...'", source, line);
    *is_rule = 1;
    return Q3N_OK;
}

enum q3n_status q3n_policy_parse(struct q3n_policy **policy, const char *text, size_t len, const char *source,
                                 struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    struct q3n_policy *p = calloc(1, sizeof *p);
    char *buf = NULL;
    *policy = NULL;
    if (!p) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", source);
        goto done;
    }
    snprintf(p->source, sizeof p->source, "%s", source);
    int line = 0;
    size_t pos = 0;
    while (pos < len) {
        size_t end = pos;
        while (end < len && text[end] != '\n') end++;
        line++;
        size_t n = end - pos;
        free(buf);
        buf = malloc(n + 1);
        if (!buf) {
            st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s:%d: out of memory", source, line);
            goto done;
        }
        memcpy(buf, text + pos, n);
        buf[n] = '\0';
        if (memchr(buf, '\0', n)) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s:%d: NUL byte in policy text", source, line);
            goto done;
        }
        struct rule r;
        int is_rule;
        st = parse_line(&r, buf, source, line, &is_rule, err);
        if (st != Q3N_OK) goto done;
        if (is_rule) {
            if (p->n == p->cap) {
                int cap = p->cap ? 2 * p->cap : 32;
                struct rule *nr = realloc(p->rules, (size_t)cap * sizeof *nr);
                if (!nr) {
                    st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s:%d: out of memory", source, line);
                    goto done;
                }
                p->rules = nr;
                p->cap = cap;
            }
            p->rules[p->n++] = r;
        }
        pos = end + 1;
    }
    if (p->n == 0) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: no rules", source);
        goto done;
    }
    *policy = p;
    p = NULL;
done:
    free(buf);
    q3n_policy_free(p);
    return st;
}

enum q3n_status q3n_policy_load(struct q3n_policy **policy, const char *path, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    char *text = NULL;
    *policy = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot open policy file: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: cannot seek", path);
        goto done;
    }
    long size = ftell(f);
    if (size < 0 || size > (1L << 24)) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: policy file size %ld out of range (max 16 MiB)", path, size);
        goto done;
    }
    rewind(f);
    text = malloc((size_t)size + 1);
    if (!text) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    if (fread(text, 1, (size_t)size, f) != (size_t)size) {
        st = q3n_error_set(err, Q3N_ERR_IO, "%s: short read", path);
        goto done;
    }
    st = q3n_policy_parse(policy, text, (size_t)size, path, err);
done:
    free(text);
    fclose(f);
    return st;
}

void q3n_policy_free(struct q3n_policy *policy)
{
    if (!policy) return;
    free(policy->rules);
    free(policy);
}

const char *q3n_policy_source(const struct q3n_policy *policy)
{
    return policy->source;
}

int q3n_policy_rule_count(const struct q3n_policy *policy)
{
    return policy->n;
}

enum q3n_status q3n_policy_lookup(const struct q3n_policy *policy, const char *name, const char *dtype,
                                  struct q3n_tolerance *tol, struct q3n_error *err)
{
    unsigned set = 0;
    memset(tol, 0, sizeof *tol);
    tol->kind = Q3N_KIND_FLOAT;
    tol->near_tie_report = 1;
    tol->oracle_k = NAN;
    tol->oracle_floor = NAN;
    tol->margin = 0.0;
    for (int i = 0; i < policy->n; i++) {
        const struct rule *r = &policy->rules[i];
        if (strcmp(r->dtype, "*") != 0 && strcmp(r->dtype, dtype) != 0) continue;
        if (fnmatch(r->pattern, name, 0) != 0) continue;
        if (r->set & K_KIND) tol->kind = r->v.kind;
        if (r->set & K_RTOL) tol->rtol = r->v.rtol;
        if (r->set & K_ATOL) tol->atol = r->v.atol;
        if (r->set & K_SMALL) tol->small = r->v.small;
        if (r->set & K_REL_L2) tol->rel_l2 = r->v.rel_l2;
        if (r->set & K_MARGIN) tol->margin = r->v.margin;
        if (r->set & K_NEAR_TIE) tol->near_tie_report = r->v.near_tie_report;
        if (r->set & K_ORACLE_K) tol->oracle_k = r->v.oracle_k;
        if (r->set & K_ORACLE_FLOOR) tol->oracle_floor = r->v.oracle_floor;
        set |= r->set;
        tol->line = r->line;
        if (r->reason[0]) snprintf(tol->reason, sizeof tol->reason, "%s", r->reason);
    }
    if (tol->line == 0)
        return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: no rule matches tensor %s at dtype %s", policy->source, name,
                             dtype);
    if (tol->kind == Q3N_KIND_FLOAT || tol->kind == Q3N_KIND_TOPK) {
        static const struct {
            unsigned bit;
            const char *name;
        } need[] = {{K_RTOL, "rtol"}, {K_ATOL, "atol"}, {K_SMALL, "small"}, {K_REL_L2, "rel_l2"}};
        for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
            if (!(set & need[i].bit))
                return q3n_error_set(err, Q3N_ERR_CONFIG, "%s: no rule sets %s for tensor %s at dtype %s",
                                     policy->source, need[i].name, name, dtype);
    }
    return Q3N_OK;
}

int q3n_policy_default_path(char *buf, size_t cap)
{
    static const char *rel = "harness/policy/default.policy";
    if (access(rel, R_OK) == 0) {
        snprintf(buf, cap, "%s", rel);
        return 1;
    }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return 0;
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    if (!slash) return 0;
    *slash = '\0';
    static const char *ups[] = {"..", "../.."};
    for (size_t i = 0; i < 2; i++) {
        int m = snprintf(buf, cap, "%s/%s/%s", exe, ups[i], rel);
        if (m > 0 && (size_t)m < cap && access(buf, R_OK) == 0) return 1;
    }
    return 0;
}
