/* determinism.c — the determinism ledger; see determinism.h. */
#include "determinism.h"
#include "outfile.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

void q3n_det_ledger_free(struct q3n_det_ledger *led)
{
    if (!led) return;
    free(led->taps);
    memset(led, 0, sizeof *led);
}

int q3n_det_ledger_ok(const struct q3n_det_ledger *led)
{
    return led->taps_neutral && led->n_regressed == 0 && led->n_missing == 0;
}

static int expected_of(const struct q3n_det_ledger *expect, const char *name)
{
    if (!expect) return -1;
    for (size_t i = 0; i < expect->n; i++)
        if (strcmp(expect->taps[i].name, name) == 0) return expect->taps[i].reproducible;
    return -1;
}

enum q3n_status q3n_determinism_run(struct q3n_det_ledger *led, const struct q3n_tool_run *r, int runs,
                                    const struct q3n_det_ledger *expect, struct q3n_error *err)
{
    memset(led, 0, sizeof *led);
    if (runs < 2) runs = 2;
    led->runs = runs;
    snprintf(led->impl, sizeof led->impl, "%s", r->impl->name);
    struct q3n_tool_run plain = *r;
    plain.golden = NULL; /* hashes only */
    size_t nl;
    float *first = NULL, *logits = NULL;
    struct q3n_intervene ref_iv, iv;
    memset(&ref_iv, 0, sizeof ref_iv);
    memset(&iv, 0, sizeof iv);
    enum q3n_status st = Q3N_OK;
    if (!q3n_mul_size(&nl, (size_t)r->T, (size_t)r->V) || !q3n_mul_size(&nl, nl, sizeof(float)) ||
        !(first = malloc(nl)) || !(logits = malloc(nl))) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "determinism: out of memory for logits");
        goto done;
    }
    struct q3n_intervene_opts o = {.record = 1};
    st = q3n_tool_forward(&plain, &o, &ref_iv, 0, first, NULL, err);
    if (st != Q3N_OK) goto done;
    led->n = ref_iv.n_records;
    led->taps = calloc(led->n ? led->n : 1, sizeof *led->taps);
    if (!led->taps) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "determinism: out of memory for %zu taps", led->n);
        goto done;
    }
    for (size_t i = 0; i < led->n; i++) {
        snprintf(led->taps[i].name, sizeof led->taps[i].name, "%s", ref_iv.records[i].name);
        led->taps[i].reproducible = 1;
        led->taps[i].expected = expected_of(expect, led->taps[i].name);
    }
    led->logits_reproducible = 1;
    for (int k = 1; k < runs; k++) {
        st = q3n_tool_forward(&plain, &o, &iv, 0, logits, NULL, err);
        if (st != Q3N_OK) goto done;
        if (!q3n_bitwise_equal(first, logits, nl)) led->logits_reproducible = 0;
        if (iv.n_records != led->n) led->n_missing++;
        for (size_t i = 0; i < led->n && i < iv.n_records; i++) {
            if (strcmp(iv.records[i].name, led->taps[i].name) != 0) {
                led->n_missing++;
                continue;
            }
            if (iv.records[i].hash != ref_iv.records[i].hash) led->taps[i].reproducible = 0;
        }
        q3n_intervene_free(&iv);
    }
    /* the taps-off run, in its own session so the kernels that ran can be described */
    void *session = NULL;
    struct q3n_tap_sink off = {.fn = NULL, .user = NULL, .intervene = 0};
    st = r->impl->open(&session, r->model, &r->opt, err);
    if (st == Q3N_OK) st = r->impl->forward(session, logits, r->tokens, r->T, &off, err);
    if (st == Q3N_OK && r->impl->describe)
        snprintf(led->kernels, sizeof led->kernels, "%s", r->impl->describe(session));
    if (session) r->impl->close(session);
    if (st != Q3N_OK) goto done;
    /* taps neutral: taps-off logits equal the taps-on logits of some run; if the logits are
     * reproducible, of every run */
    led->taps_neutral = q3n_bitwise_equal(first, logits, nl);
    if (!led->taps_neutral && !led->logits_reproducible) {
        /* run-to-run noise: judge neutrality only where the impl is reproducible */
        led->taps_neutral = -1;
    }
    for (size_t i = 0; i < led->n; i++) {
        led->n_nonrepro += !led->taps[i].reproducible;
        led->n_regressed += led->taps[i].expected == 1 && !led->taps[i].reproducible;
    }
done:
    q3n_intervene_free(&ref_iv);
    q3n_intervene_free(&iv);
    free(first);
    free(logits);
    if (st != Q3N_OK) q3n_det_ledger_free(led);
    return st;
}

void q3n_det_ledger_write_text(FILE *out, const struct q3n_det_ledger *led)
{
    fprintf(out, "determinism ledger: impl %s (%s), %d runs with taps on, 1 with taps off\n", led->impl,
            led->kernels[0] ? led->kernels : "kernels not described", led->runs);
    fprintf(out, "  taps on vs off, logits bitwise equal: %s\n",
            led->taps_neutral == 1 ? "yes" : led->taps_neutral == 0 ? "NO: emitting taps changes the result"
                                                                     : "unknown (logits not reproducible)");
    fprintf(out, "  logits bitwise reproducible: %s\n", led->logits_reproducible ? "yes" : "no");
    fprintf(out, "  taps bitwise reproducible: %zu of %zu\n", led->n - led->n_nonrepro, led->n);
    size_t held = 0;
    for (size_t i = 0; i < led->n; i++) held += led->taps[i].expected == 1;
    if (held) fprintf(out, "  held to bitwise equality by the expected ledger: %zu taps, %zu regressed\n", held, led->n_regressed);
    if (led->n_missing) fprintf(out, "  FAIL: the taps emitted changed between runs (%zu differences)\n", led->n_missing);
    for (size_t i = 0; i < led->n; i++) {
        const struct q3n_det_tap *t = &led->taps[i];
        if (t->reproducible) continue;
        fprintf(out, "  %s %s%s\n", t->expected == 1 ? "FAIL (was reproducible)" : "not reproducible:", t->name,
                t->expected == 0 ? " (known)" : "");
    }
    if (led->n_nonrepro)
        fprintf(out, "  non-reproducible kernels are among: %s\n", led->kernels[0] ? led->kernels : "(not described)");
}

enum q3n_status q3n_det_ledger_write_json(const struct q3n_det_ledger *led, const char *path, struct q3n_error *err)
{
    enum q3n_status st = Q3N_OK;
    char *text = NULL;
    cJSON *root = cJSON_CreateObject();
    cJSON *taps = cJSON_CreateArray();
    if (!root || !taps) {
        cJSON_Delete(taps);
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    cJSON_AddStringToObject(root, "impl", led->impl);
    cJSON_AddStringToObject(root, "kernels", led->kernels);
    cJSON_AddNumberToObject(root, "runs", led->runs);
    cJSON_AddNumberToObject(root, "taps_neutral", led->taps_neutral);
    cJSON_AddBoolToObject(root, "logits_reproducible", led->logits_reproducible);
    for (size_t i = 0; i < led->n; i++) {
        cJSON *t = cJSON_CreateObject();
        if (!t) {
            st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
            goto done;
        }
        cJSON_AddStringToObject(t, "name", led->taps[i].name);
        cJSON_AddBoolToObject(t, "reproducible", led->taps[i].reproducible);
        cJSON_AddItemToArray(taps, t);
    }
    cJSON_AddItemToObject(root, "taps", taps);
    text = cJSON_Print(root);
    if (!text) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    struct q3n_outfile f;
    if ((st = q3n_outfile_open(&f, path, err)) != Q3N_OK) goto done;
    int bad = fputs(text, f.f) < 0 || fputc('\n', f.f) == EOF;
    st = q3n_outfile_finish(&f, bad ? q3n_error_set(err, Q3N_ERR_IO, "%s: write error", path) : Q3N_OK, err);
done:
    free(text);
    cJSON_Delete(root);
    return st;
}

enum q3n_status q3n_det_ledger_read(struct q3n_det_ledger *led, const char *path, struct q3n_error *err)
{
    memset(led, 0, sizeof *led);
    enum q3n_status st = Q3N_OK;
    char *text = NULL;
    cJSON *root = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return q3n_error_set(err, Q3N_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, len = 0;
    text = malloc(cap + 1);
    while (text) {
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (len < cap) break;
        if (cap > ((size_t)1 << 30)) break;
        cap *= 2;
        char *nt = realloc(text, cap + 1);
        if (!nt) {
            free(text);
            text = NULL;
            break;
        }
        text = nt;
    }
    fclose(f);
    if (!text) return q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
    text[len] = '\0';
    root = cJSON_Parse(text);
    cJSON *taps = root ? cJSON_GetObjectItemCaseSensitive(root, "taps") : NULL;
    cJSON *impl = root ? cJSON_GetObjectItemCaseSensitive(root, "impl") : NULL;
    if (!cJSON_IsArray(taps) || !cJSON_IsString(impl)) {
        st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: not a determinism ledger (needs \"impl\" and \"taps\")", path);
        goto done;
    }
    snprintf(led->impl, sizeof led->impl, "%s", impl->valuestring);
    size_t n = (size_t)cJSON_GetArraySize(taps);
    led->taps = calloc(n ? n : 1, sizeof *led->taps);
    if (!led->taps) {
        st = q3n_error_set(err, Q3N_ERR_NOMEM, "%s: out of memory", path);
        goto done;
    }
    const cJSON *t;
    cJSON_ArrayForEach(t, taps)
    {
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(t, "name");
        const cJSON *rep = cJSON_GetObjectItemCaseSensitive(t, "reproducible");
        if (!cJSON_IsString(name) || !cJSON_IsBool(rep)) {
            st = q3n_error_set(err, Q3N_ERR_FORMAT, "%s: taps[%zu] needs \"name\" and a boolean \"reproducible\"",
                               path, led->n);
            goto done;
        }
        snprintf(led->taps[led->n].name, sizeof led->taps[led->n].name, "%s", name->valuestring);
        led->taps[led->n].reproducible = cJSON_IsTrue(rep);
        led->taps[led->n].expected = -1;
        led->n++;
    }
done:
    cJSON_Delete(root);
    free(text);
    if (st != Q3N_OK) q3n_det_ledger_free(led);
    return st;
}
