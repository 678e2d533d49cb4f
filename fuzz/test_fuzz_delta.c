/* test_fuzz_delta.c — the delta-rule equivalence fuzzer (harness/fuzz_delta.c): the reference's
 * three forms pass on drawn cases, and each planted bug below is caught. The planted forms
 * wrap the reference's own functions, so the only difference is the bug. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../harness/fuzz_cases.h"
#include "../ref/ops.h"

#define CASES 300

/* Runs `n` cases from seed 1 through forms; returns the number that failed and copies the
 * first failure's description into first (if any). */
static int run_cases(const struct q3n_fuzz_delta_forms *forms, int n, char *first, size_t cap)
{
    int failed = 0;
    if (first) first[0] = '\0';
    for (int i = 0; i < n; i++) {
        struct q3n_fuzz_delta_case c;
        struct q3n_fuzz_delta_result res;
        struct q3n_error err;
        q3n_fuzz_delta_case_draw(&c, q3n_fuzz_case_seed(1, i));
        assert_int_equal(q3n_fuzz_delta_run(&c, forms, &res, &err), Q3N_OK);
        assert_true(res.checks >= 9);
        if (res.failed) {
            if (failed == 0 && first) {
                char d[256];
                q3n_fuzz_delta_case_describe(&c, d, sizeof d);
                snprintf(first, cap, "%s: %s", d, res.worst);
            }
            failed++;
        } else if (!(res.worst_ratio <= 1.0)) {
            fail_msg("case %d passed with worst ratio %g", i, res.worst_ratio);
        }
    }
    return failed;
}

static void the_reference_forms_agree_with_the_double_oracle_on_every_drawn_case(void **state)
{
    (void)state;
    struct q3n_fuzz_delta_forms forms;
    char first[600];
    q3n_fuzz_delta_ref_forms(&forms);
    int failed = run_cases(&forms, CASES, first, sizeof first);
    if (failed) fail_msg("%d of %d cases failed; first: %s", failed, CASES, first);
}

/* ---- planted bugs ---------------------------------------------------------------------- */

/* Chunked form whose final state skips the last partial chunk (bug family 5: "a wrong final
 * state whenever T is not a multiple of the chunk"). */
static void chunked_drops_partial_chunk_state(void *o, void *state, const void *q, const void *k, const void *v,
                                              const void *g, const void *beta, void *scratch, int64_t T,
                                              int64_t NK, int64_t NV, int64_t DK, int64_t DV, int64_t C)
{
    size_t ns = (size_t)(NV * DK * DV);
    ref_real *saved = malloc(ns * sizeof *saved);
    assert_non_null(saved);
    memcpy(saved, state, ns * sizeof *saved);
    ref_delta_rule_chunked(o, state, q, k, v, g, beta, scratch, T, NK, NV, DK, DV, C);
    int64_t full = T - T % C;
    if (full != T) { /* recompute the state over the whole chunks only */
        memcpy(state, saved, ns * sizeof *saved);
        ref_real *o2 = malloc((size_t)(T * NV * DV) * sizeof *o2);
        assert_non_null(o2);
        if (full > 0) ref_delta_rule_chunked(o2, state, q, k, v, g, beta, scratch, full, NK, NV, DK, DV, C);
        free(o2);
    }
    free(saved);
}

/* Recurrent form reading each token's decay one token late (g[t-1], g[-1] := 0). */
static void recurrent_decay_off_by_one(void *o, void *state, const void *q, const void *k, const void *v,
                                       const void *g, const void *beta, int64_t T, int64_t NK, int64_t NV,
                                       int64_t DK, int64_t DV)
{
    ref_real *gs = calloc((size_t)(T * NV), sizeof *gs);
    assert_non_null(gs);
    if (T > 1) memcpy(gs + NV, g, (size_t)((T - 1) * NV) * sizeof *gs);
    ref_delta_rule_recurrent(o, state, q, k, v, gs, beta, T, NK, NV, DK, DV);
    free(gs);
}

/* Naive form that writes one element past the end of o. */
static void naive_writes_past_end(void *o, void *state, const void *q, const void *k, const void *v, const void *g,
                                  const void *beta, void *scratch, int64_t T, int64_t NK, int64_t NV, int64_t DK,
                                  int64_t DV)
{
    ref_delta_rule_naive(o, state, q, k, v, g, beta, scratch, T, NK, NV, DK, DV);
    ((ref_real *)o)[T * NV * DV] = 0;
}

/* Chunked form that never writes the first token's output (it stays as the caller left it). */
static void chunked_skips_first_output(void *o, void *state, const void *q, const void *k, const void *v,
                                       const void *g, const void *beta, void *scratch, int64_t T, int64_t NK,
                                       int64_t NV, int64_t DK, int64_t DV, int64_t C)
{
    ref_real *keep = malloc((size_t)(NV * DV) * sizeof *keep);
    assert_non_null(keep);
    memcpy(keep, o, (size_t)(NV * DV) * sizeof *keep);
    ref_delta_rule_chunked(o, state, q, k, v, g, beta, scratch, T, NK, NV, DK, DV, C);
    memcpy(o, keep, (size_t)(NV * DV) * sizeof *keep);
    free(keep);
}

static void expect_caught(const struct q3n_fuzz_delta_forms *forms, const char *needle)
{
    char first[600];
    int failed = run_cases(forms, 60, first, sizeof first);
    if (failed == 0) fail_msg("planted bug not caught in 60 cases");
    if (strstr(first, needle) == NULL) fail_msg("caught, but not where expected (%s): %s", needle, first);
}

static void a_chunked_state_that_drops_the_partial_chunk_is_caught(void **state)
{
    (void)state;
    struct q3n_fuzz_delta_forms forms;
    q3n_fuzz_delta_ref_forms(&forms);
    forms.chunked = chunked_drops_partial_chunk_state;
    expect_caught(&forms, "chunked(C=");
}

static void a_recurrent_decay_one_token_late_is_caught(void **state)
{
    (void)state;
    struct q3n_fuzz_delta_forms forms;
    q3n_fuzz_delta_ref_forms(&forms);
    forms.recurrent = recurrent_decay_off_by_one;
    expect_caught(&forms, "recurrent");
}

static void a_write_past_the_output_is_caught_by_the_guards(void **state)
{
    (void)state;
    struct q3n_fuzz_delta_forms forms;
    q3n_fuzz_delta_ref_forms(&forms);
    forms.naive = naive_writes_past_end;
    expect_caught(&forms, "naive: wrote past the end");
}

static void an_unwritten_output_is_caught_by_the_nan_poison(void **state)
{
    (void)state;
    struct q3n_fuzz_delta_forms forms;
    q3n_fuzz_delta_ref_forms(&forms);
    forms.chunked = chunked_skips_first_output;
    expect_caught(&forms, "o vs oracle: rel_l2=nan");
}

static void drawn_cases_cover_the_places_where_delta_rule_code_breaks(void **state)
{
    (void)state;
    int seen_T[5] = {0}; /* 63, 65, 75, 127, 129 */
    static const int64_t wanted_T[5] = {63, 65, 75, 127, 129};
    int dk60 = 0, dk100 = 0, strong = 0, weak = 0, near0 = 0, near1 = 0, zero = 0, chunk1 = 0, big_chunk = 0;
    for (int i = 0; i < CASES; i++) {
        struct q3n_fuzz_delta_case c;
        q3n_fuzz_delta_case_draw(&c, q3n_fuzz_case_seed(1, i));
        for (int j = 0; j < 5; j++) seen_T[j] |= c.T == wanted_T[j];
        dk60 |= c.DK == 60 || c.DV == 60;
        dk100 |= c.DK == 100 || c.DV == 100;
        strong |= c.g_max_mag >= 20.0;
        weak |= c.g_min_mag <= 1e-4;
        near0 |= c.beta_mode == Q3N_FUZZ_BETA_NEAR0;
        near1 |= c.beta_mode == Q3N_FUZZ_BETA_NEAR1;
        zero |= c.zero_gates;
        for (int j = 0; j < c.n_chunks; j++) {
            chunk1 |= c.chunks[j] == 1;
            big_chunk |= c.chunks[j] > 100;
        }
        assert_true(c.NV % c.NK == 0);
        assert_true(c.T >= 1);
    }
    for (int j = 0; j < 5; j++)
        if (!seen_T[j]) fail_msg("T=%lld never drawn in %d cases", (long long)wanted_T[j], CASES);
    assert_true(dk60 && dk100 && strong && weak && near0 && near1 && zero && chunk1 && big_chunk);
}

static void the_same_seed_draws_the_same_case_and_inputs(void **state)
{
    (void)state;
    struct q3n_fuzz_delta_case a, b;
    q3n_fuzz_delta_case_draw(&a, 42);
    q3n_fuzz_delta_case_draw(&b, 42);
    assert_memory_equal(&a, &b, sizeof a);
    int64_t n = a.T * a.NV * (a.DK > a.DV ? a.DK : a.DV) + a.NV * a.DK * a.DV;
    double *x = calloc((size_t)(6 * n), sizeof *x), *y = calloc((size_t)(6 * n), sizeof *y);
    assert_non_null(x);
    assert_non_null(y);
    q3n_fuzz_delta_inputs(&a, x, x + n, x + 2 * n, x + 3 * n, x + 4 * n, x + 5 * n);
    q3n_fuzz_delta_inputs(&b, y, y + n, y + 2 * n, y + 3 * n, y + 4 * n, y + 5 * n);
    assert_memory_equal(x, y, (size_t)(6 * n) * sizeof *x);
    free(x);
    free(y);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(the_reference_forms_agree_with_the_double_oracle_on_every_drawn_case),
        cmocka_unit_test(a_chunked_state_that_drops_the_partial_chunk_is_caught),
        cmocka_unit_test(a_recurrent_decay_one_token_late_is_caught),
        cmocka_unit_test(a_write_past_the_output_is_caught_by_the_guards),
        cmocka_unit_test(an_unwritten_output_is_caught_by_the_nan_poison),
        cmocka_unit_test(drawn_cases_cover_the_places_where_delta_rule_code_breaks),
        cmocka_unit_test(the_same_seed_draws_the_same_case_and_inputs),
    };
    return cmocka_run_group_tests_name("fuzz_fuzz_delta", tests, NULL, NULL);
}
