/* cmd_fuzz.c — `q3n fuzz`: the shape and config fuzzer (issue 8; docs/fuzzing.md).
 *
 * Per case index i of a run seeded S: a delta-rule case (recurrent ≡ chunked at several chunk
 * sizes ≡ naive ≡ a double oracle) and a model case (ref vs --impl tap by tap under the policy,
 * then the state-lifecycle checks on --impl). The first failure prints the case seed and a
 * one-line repro, shrinks the model case and writes the regression pair under --out. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../ref/model.h"
#include "checkpoint.h"
#include "clock.h"
#include "cmds.h"
#include "fuzz_cases.h"
#include "impl.h"
#include "policy.h"
#include "result.h"
#include "shrink.h"
#include "verify.h"
#include "weights.h"

extern char **environ;

#define DEFAULT_POLICY "fuzz/fuzz.policy"

struct fuzz_args {
    uint64_t seed;
    int64_t cases, delta_cases;
    double time_limit;
    const char *impl, *policy_path, *test_bug, *out, *work, *ref64;
    int64_t ref64_every;
    int family;            /* -1: drawn */
    int have_case_seed;
    uint64_t case_seed;
    int keep_going, no_shrink, verbose, shrink_tries;
    double self_rel_l2;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: q3n fuzz [--seed S] [--cases N] [--impl cpu|cuda|ref] [--time SECONDS]\n"
            "                [--case-seed X] [--family small|odd|real-heads] [--delta-cases N]\n"
            "                [--policy FILE] [--out DIR] [--work DIR] [--test-bug NAME]\n"
            "                [--keep-going] [--no-shrink] [--shrink-tries N] [--self-rel-l2 B] [--verbose]\n"
            "                [--ref64 BUILD/ref64/q3n [--ref64-every N]]\n"
            "\n"
            "Draws N random valid configs, weights and inputs (seeded: the same seed draws the same cases\n"
            "everywhere) and checks ref vs --impl tap by tap under the policy (default %s),\n"
            "prefill+decode, split prefill, state after a prefix, conv state after short prompts, reset and\n"
            "reused sessions, interleaved sessions; and N delta-rule cases (recurrent, chunked at several\n"
            "chunk sizes, naive, against a double oracle). --time stops drawing new cases after SECONDS.\n"
            "On the first failure (all of them with --keep-going): the case seed, a repro command, and the\n"
            "case shrunk and written to --out DIR (default fuzz-repro) as checkpoint + golden + candidate.\n"
            "--test-bug plants a named bug in --impl (a test of the fuzzer itself).\n"
            "--ref64 BIN: every N-th case, also judge the float ref against the float64 oracle: the case is\n"
            "written as a checkpoint, `BIN run --dump` (the `make ref64` build) runs it in double, and the\n"
            "float ref's taps and logits are compared with that dump under the policy.\n"
            "Exit: 0 every case passed, 1 a failure was found, 2 usage or input error.\n",
            DEFAULT_POLICY);
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    if (!s || !*s) return 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (*end != '\0') return 0;
    *out = (uint64_t)v;
    return 1;
}

static int parse_args(struct fuzz_args *a, int argc, char **argv)
{
    memset(a, 0, sizeof *a);
    a->seed = 1;
    a->cases = 200;
    a->delta_cases = -1;
    a->impl = "cpu";
    a->policy_path = DEFAULT_POLICY;
    a->out = "fuzz-repro";
    a->family = -1;
    a->shrink_tries = 60;
    a->ref64_every = 1;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t u;
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(o, "--keep-going") == 0) {
            a->keep_going = 1;
        } else if (strcmp(o, "--no-shrink") == 0) {
            a->no_shrink = 1;
        } else if (strcmp(o, "--verbose") == 0 || strcmp(o, "-v") == 0) {
            a->verbose = 1;
        } else if (!v) {
            fprintf(stderr, "q3n fuzz: %s needs a value (or is unknown)\n", o);
            return 0;
        } else {
            i++;
            if (strcmp(o, "--seed") == 0 && parse_u64(v, &u)) a->seed = u;
            else if (strcmp(o, "--cases") == 0 && parse_u64(v, &u) && u <= 100000000) a->cases = (int64_t)u;
            else if (strcmp(o, "--delta-cases") == 0 && parse_u64(v, &u) && u <= 100000000)
                a->delta_cases = (int64_t)u;
            else if (strcmp(o, "--ref64-every") == 0 && parse_u64(v, &u) && u >= 1 && u <= 100000000)
                a->ref64_every = (int64_t)u;
            else if (strcmp(o, "--shrink-tries") == 0 && parse_u64(v, &u) && u <= 100000) a->shrink_tries = (int)u;
            else if (strcmp(o, "--case-seed") == 0 && parse_u64(v, &u)) {
                a->have_case_seed = 1;
                a->case_seed = u;
            } else if (strcmp(o, "--time") == 0 && strtod(v, NULL) > 0)
                a->time_limit = strtod(v, NULL);
            else if (strcmp(o, "--self-rel-l2") == 0 && strtod(v, NULL) > 0)
                a->self_rel_l2 = strtod(v, NULL);
            else if (strcmp(o, "--impl") == 0) a->impl = v;
            else if (strcmp(o, "--policy") == 0) a->policy_path = v;
            else if (strcmp(o, "--test-bug") == 0) a->test_bug = v;
            else if (strcmp(o, "--out") == 0) a->out = v;
            else if (strcmp(o, "--work") == 0) a->work = v;
            else if (strcmp(o, "--ref64") == 0) a->ref64 = v;
            else if (strcmp(o, "--family") == 0) {
                a->family = -2;
                for (int f = 0; f < Q3N_FUZZ_FAMILY_COUNT; f++)
                    if (strcmp(v, q3n_fuzz_family_name((enum q3n_fuzz_family)f)) == 0) a->family = f;
                if (a->family == -2) {
                    fprintf(stderr, "q3n fuzz: unknown family '%s' (small, odd, real-heads)\n", v);
                    return 0;
                }
            } else {
                fprintf(stderr, "q3n fuzz: bad option or value: %s %s\n", o, v);
                return 0;
            }
        }
    }
    if (a->delta_cases < 0) a->delta_cases = a->cases;
    return 1;
}


/* The repro command of one case. */
static void repro_cmd(char *buf, size_t cap, const struct fuzz_args *a, uint64_t case_seed, int family)
{
    snprintf(buf, cap, "q3n fuzz --case-seed 0x%016llx%s%s --impl %s%s%s%s%s", (unsigned long long)case_seed,
             family >= 0 ? " --family " : "", family >= 0 ? q3n_fuzz_family_name((enum q3n_fuzz_family)family) : "",
             a->impl, a->test_bug ? " --test-bug " : "", a->test_bug ? a->test_bug : "",
             strcmp(a->policy_path, DEFAULT_POLICY) != 0 ? " --policy " : "",
             strcmp(a->policy_path, DEFAULT_POLICY) != 0 ? a->policy_path : "");
}

struct shrink_ctx {
    const struct q3n_fuzz_model_options *opt;
};

static int still_fails(void *user, const struct q3n_fuzz_case *c)
{
    struct shrink_ctx *sc = user;
    struct q3n_fuzz_model_result res;
    struct q3n_error err;
    if (q3n_fuzz_model_check(c, sc->opt, &res, &err) != Q3N_OK) return -1;
    return res.failed;
}

static int shrink_and_write(const struct fuzz_args *a, const struct q3n_fuzz_model_options *opt,
                            const struct q3n_fuzz_case *c, const char *cmd)
{
    struct q3n_fuzz_case small = *c;
    struct shrink_ctx sc = {opt};
    struct q3n_fuzz_model_result res;
    struct q3n_error err;
    char desc[1024], dir[4096];
    int tries = 0;
    if (!a->no_shrink) {
        q3n_shrink_case(&small, still_fails, &sc, a->shrink_tries, &tries);
        q3n_fuzz_case_describe(&small, desc, sizeof desc);
        printf("  shrunk in %d tries to: %s\n", tries, desc);
        if (q3n_fuzz_model_check(&small, opt, &res, &err) == Q3N_OK && res.failed)
            printf("  shrunk case fails: %s\n", res.what);
    }
    /* a folder that exists (an earlier run) is never overwritten: the next free suffix is used */
    struct stat sb;
    snprintf(dir, sizeof dir, "%s/case-%016llx", a->out, (unsigned long long)c->seed);
    for (int k = 2; stat(dir, &sb) == 0 && k < 1000; k++)
        snprintf(dir, sizeof dir, "%s/case-%016llx-%d", a->out, (unsigned long long)c->seed, k);
    if (q3n_shrink_write_repro(dir, &small, a->impl, a->test_bug, cmd, &err) != Q3N_OK) {
        fprintf(stderr, "q3n fuzz: could not write the repro: %s\n", err.msg);
        return 0;
    }
    printf("  repro written: %s (case.txt, golden.h5, candidate.h5, config.json)\n", dir);
    return 1;
}

/* The float ref against the ref64 oracle on case c: the case's checkpoint is written to
 * <work>/ref64-ckpt, `bin run --model ... --tokens ... --chunk C --dump <work>/ref64.h5` runs it
 * in double, and <work>/golden.h5 (the float ref's dump of the same case, left there by
 * q3n_fuzz_model_check) is compared with it. Returns 1 on a failure (what filled), 0 on a
 * pass, -1 on an error (what filled). */
static int ref64_check(const struct fuzz_args *a, const struct q3n_fuzz_case *c, const struct q3n_policy *policy,
                       const char *work, char *what, size_t cap, double *worst_rel_l2)
{
    char ckpt[4200], dump[4200], golden[4200], chunk[32], cmd[8500];
    struct q3n_model *model = NULL;
    struct q3n_result *result = NULL;
    struct q3n_error err;
    int64_t *tokens = malloc((size_t)c->T * sizeof *tokens);
    char *list = malloc((size_t)c->T * 21 + 1);
    int rc = -1;
    if (!tokens || !list) {
        snprintf(what, cap, "out of memory");
        goto done;
    }
    snprintf(ckpt, sizeof ckpt, "%s/ref64-ckpt", work);
    snprintf(dump, sizeof dump, "%s/ref64.h5", work);
    snprintf(golden, sizeof golden, "%s/golden.h5", work);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' '%s'", ckpt, dump);
    if (system(cmd) != 0) {
        snprintf(what, cap, "cannot clear %.300s", ckpt);
        goto done;
    }
    struct q3n_checkpoint_layout layout = {.dtype = Q3N_ST_F32, .fused_experts = 0, .shards = 1};
    if (q3n_fuzz_model_build(&model, c, &err) != Q3N_OK || q3n_checkpoint_write(ckpt, model, &layout, &err) != Q3N_OK) {
        snprintf(what, cap, "ref64: %.400s", err.msg);
        goto done;
    }
    q3n_fuzz_case_tokens(c, tokens);
    size_t used = 0;
    for (int64_t t = 0; t < c->T; t++)
        used += (size_t)snprintf(list + used, (size_t)c->T * 21 + 1 - used, "%s%lld", t ? "," : "", (long long)tokens[t]);
    snprintf(chunk, sizeof chunk, "%lld", (long long)c->chunk_size);
    char *argv[] = {(char *)a->ref64, "run", "--model", ckpt, "--tokens", list, "--chunk", chunk, "--dump", dump, NULL};
    posix_spawn_file_actions_t fa;
    pid_t pid;
    int status = 0;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    int sp = posix_spawn(&pid, a->ref64, &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (sp != 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        snprintf(what, cap, "ref64: `%.150s run --model %.150s ... --dump %.150s` failed (status %d)", a->ref64, ckpt, dump,
                 WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        goto done;
    }
    struct q3n_compare_options co = {.policy = policy, .policy_path = a->policy_path, .dtype = "float32"};
    if (q3n_compare_files(&result, golden, dump, &co, &err) != Q3N_OK) {
        snprintf(what, cap, "ref64 compare: %.400s", err.msg);
        goto done;
    }
    rc = 0;
    for (int64_t i = 0; i < result->n_tensors && rc == 0; i++) {
        const struct q3n_tensor_result *t = &result->tensors[i];
        if (!(t->m.rel_l2 <= *worst_rel_l2)) *worst_rel_l2 = t->m.rel_l2;
        if (q3n_verdict_is_failure(t->verdict)) {
            rc = 1;
            snprintf(what, cap, "float ref vs ref64 oracle: %.160s %s rel_l2=%.3g max_abs=%.3g", t->name,
                     q3n_verdict_name(t->verdict), t->m.rel_l2, t->m.max_abs);
        }
    }
done:
    q3n_result_free(result);
    q3n_model_close(model);
    free(tokens);
    free(list);
    return rc;
}

int q3n_cmd_fuzz(int argc, char **argv)
{
    struct fuzz_args a;
    struct q3n_policy *policy = NULL;
    struct q3n_error err;
    char work[4096] = "", desc[1024], cmd[512];
    int rc = 0, made_work = 0;
    int64_t model_cases = 0, delta_cases = 0, failures = 0, explained = 0, near_ties = 0;
    int64_t by_family[Q3N_FUZZ_FAMILY_COUNT] = {0};
    int64_t delta_checks = 0, model_checks = 0, ref64_cases = 0;
    double worst_delta = 0.0, worst_self = 0.0, worst_ref64 = 0.0;

    if (!parse_args(&a, argc, argv)) {
        usage(stderr);
        return 2;
    }
    if (!q3n_impl_find(a.impl) || !q3n_impl_find(ref_impl.name)) {
        fprintf(stderr, "q3n fuzz: implementation '%s' (or %s) is not built into this binary\n", a.impl, ref_impl.name);
        return 2;
    }
    if (q3n_policy_load(&policy, a.policy_path, &err) != Q3N_OK) {
        fprintf(stderr, "q3n fuzz: %s\n", err.msg);
        return 2;
    }
    if (a.work) {
        snprintf(work, sizeof work, "%s", a.work);
        if (mkdir(work, 0777) != 0 && access(work, W_OK) != 0) {
            fprintf(stderr, "q3n fuzz: cannot use work folder %s\n", work);
            q3n_policy_free(policy);
            return 2;
        }
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(work, sizeof work, "%s/q3n-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(work)) {
            fprintf(stderr, "q3n fuzz: cannot create a work folder under %s\n", tmp && *tmp ? tmp : "/tmp");
            q3n_policy_free(policy);
            return 2;
        }
        made_work = 1;
    }
    struct q3n_fuzz_model_options mopt = {.impl = a.impl,
                                          .policy = policy,
                                          .policy_path = a.policy_path,
                                          .test_bug = a.test_bug,
                                          .work_dir = work,
                                          .self_rel_l2 = a.self_rel_l2};
    struct q3n_fuzz_delta_forms forms;
    q3n_fuzz_delta_ref_forms(&forms);

    printf("q3n fuzz: seed %llu, %lld cases, impl %s vs %s, policy %s%s%s\n", (unsigned long long)a.seed,
           (long long)(a.have_case_seed ? 1 : a.cases), a.impl, ref_impl.name, a.policy_path, a.test_bug ? ", planted bug " : "",
           a.test_bug ? a.test_bug : "");
    double t0 = q3n_now_s();
    int64_t n = a.have_case_seed ? 1 : (a.cases > a.delta_cases ? a.cases : a.delta_cases);
    for (int64_t i = 0; i < n; i++) {
        if (a.time_limit > 0 && q3n_now_s() - t0 > a.time_limit) {
            printf("q3n fuzz: time budget of %.0f s reached after %lld cases\n", a.time_limit, (long long)i);
            break;
        }
        uint64_t cs = a.have_case_seed ? a.case_seed : q3n_fuzz_case_seed(a.seed, i);
        int failed_here = 0;

        if (i < a.delta_cases) {
            struct q3n_fuzz_delta_case dc;
            struct q3n_fuzz_delta_result dr;
            q3n_fuzz_delta_case_draw(&dc, cs);
            if (q3n_fuzz_delta_run(&dc, &forms, &dr, &err) != Q3N_OK) {
                fprintf(stderr, "q3n fuzz: %s\n", err.msg);
                rc = 2;
                break;
            }
            delta_cases++;
            delta_checks += dr.checks;
            if (dr.worst_ratio > worst_delta) worst_delta = dr.worst_ratio;
            q3n_fuzz_delta_case_describe(&dc, desc, sizeof desc);
            if (dr.failed) {
                repro_cmd(cmd, sizeof cmd, &a, cs, a.family);
                printf("FAIL case %lld seed 0x%016llx delta rule: %s\n  %s\n  repro: %s\n", (long long)i,
                       (unsigned long long)cs, dr.worst, desc, cmd);
                failures++;
                failed_here = 1;
            } else if (a.verbose) {
                printf("ok   case %lld %s: %d checks, worst %.0f%% of tolerance (cond %.3g)\n", (long long)i, desc,
                       dr.checks, 100.0 * dr.worst_ratio, dr.cond);
            }
        }

        if (i < a.cases && !failed_here) {
            struct q3n_fuzz_case c;
            struct q3n_fuzz_model_result mr;
            q3n_fuzz_case_draw(&c, cs, a.family);
            q3n_fuzz_case_describe(&c, desc, sizeof desc);
            double tc = q3n_now_s();
            if (q3n_fuzz_model_check(&c, &mopt, &mr, &err) != Q3N_OK) {
                repro_cmd(cmd, sizeof cmd, &a, cs, a.family);
                fprintf(stderr, "q3n fuzz: case %lld (%s): %s\n  repro: %s\n", (long long)i, desc, err.msg, cmd);
                rc = 2;
                break;
            }
            model_cases++;
            by_family[c.family]++;
            model_checks += mr.checks;
            explained += mr.explained;
            near_ties += mr.near_tie;
            if (mr.worst_self_rel_l2 > worst_self) worst_self = mr.worst_self_rel_l2;
            if (!mr.failed && a.ref64 && i % a.ref64_every == 0) {
                char what[512];
                int r64 = ref64_check(&a, &c, policy, work, what, sizeof what, &worst_ref64);
                if (r64 < 0) {
                    fprintf(stderr, "q3n fuzz: case %lld: %s\n", (long long)i, what);
                    rc = 2;
                    break;
                }
                ref64_cases++;
                if (r64 == 1) {
                    mr.failed = 1;
                    snprintf(mr.what, sizeof mr.what, "%s", what);
                }
            }
            if (mr.failed) {
                repro_cmd(cmd, sizeof cmd, &a, cs, a.family);
                printf("FAIL case %lld seed 0x%016llx: %s\n  %s\n  repro: %s\n", (long long)i, (unsigned long long)cs,
                       mr.what, desc, cmd);
                fflush(stdout);
                failures++;
                failed_here = 1;
                shrink_and_write(&a, &mopt, &c, cmd);
            } else if (a.verbose) {
                printf("ok   case %lld %s: %d checks, self worst rel_l2 %.2g%s (%.2f s)\n", (long long)i, desc,
                       mr.checks, mr.worst_self_rel_l2, mr.explained ? ", near-tie flip explained" : "",
                       q3n_now_s() - tc);
            }
        }
        fflush(stdout);
        if (failed_here && !a.keep_going) break;
    }
    double dt = q3n_now_s() - t0;
    char oracle[96] = "";
    if (a.ref64)
        snprintf(oracle, sizeof oracle, "; %lld judged against ref64 (worst tap rel_l2 %.3g)", (long long)ref64_cases,
                 worst_ref64);
    printf("q3n fuzz: %lld model cases (%lld small, %lld odd, %lld real-heads; %lld checks; %lld with a router "
           "near-tie, %lld with a difference it explains), %lld delta-rule cases (%lld checks, worst %.0f%% of tolerance), worst "
           "self-consistency rel_l2 %.3g%s; %lld failed; %.1f s\n",
           (long long)model_cases, (long long)by_family[Q3N_FUZZ_SMALL], (long long)by_family[Q3N_FUZZ_ODD],
           (long long)by_family[Q3N_FUZZ_REAL_HEADS], (long long)model_checks, (long long)near_ties, (long long)explained,
           (long long)delta_cases, (long long)delta_checks, 100.0 * worst_delta, worst_self, oracle,
           (long long)failures, dt);
    if (made_work) {
        char path[8300];
        snprintf(path, sizeof path, "%s/golden.h5", work);
        unlink(path);
        snprintf(path, sizeof path, "%s/candidate.h5", work);
        unlink(path);
        snprintf(path, sizeof path, "rm -rf '%s/ref64-ckpt' '%s/ref64.h5'", work, work);
        if (a.ref64 && system(path) != 0) fprintf(stderr, "q3n fuzz: could not clean %s\n", work);
        rmdir(work);
    }
    q3n_policy_free(policy);
    if (rc) return rc;
    return failures > 0 ? 1 : 0;
}
