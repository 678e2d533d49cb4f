/* cmd_calibrate.c — `q3n calibrate`: derive float32 tolerances from measured noise
 * (harness/calibrate.h) and write them, with provenance, as a policy file. */
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "calibrate.h"
#include "cmds.h"
#include "goldenrun.h"
#include "outfile.h"
#include "verify.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: q3n calibrate [--goldens 'G.h5 ...'] [--impls ref,cpu] [--threads 1,2] [--chunks 4,16,64]\n"
            "                     [--seeds N] [--synth-preset tiny] [--quantile Q] [--margin M] [--small S]\n"
            "                     [--per-kind] [--ref64 BUILD/ref64/q3n] [--dtype f32|bf16] [--out POLICY]\n"
            "                     [--check COMMITTED.policy]\n"
            "Measures the float32 noise floor and derives tolerances from it:\n"
            "  - every implementation against every float32/float64 golden (default golden/data/*_f32.h5 and\n"
            "    *_f64.h5), cpu also at each thread count and chunk size;\n"
            "  - on N synthetic models (seeds 1..N, default 3), cpu variants against the ref run;\n"
            "  - with --ref64 (the float64 reference binary, `make ref64`): every variant also against the\n"
            "    float64 reference's dump of each golden's inputs (q3n's own oracle).\n"
            "rel_l2 and rtol = next 1-2-5 value >= 2 x Q-quantile (default 1: the maximum) x margin\n"
            "(default 10), the rule harness/policy/default.policy states. --dtype bf16 calibrates the bfloat16\n"
            "column from the same runs with every live tap rounded to bf16 (emulated; the committed bf16 rule\n"
            "uses --margin 2 --small 1). --out writes the policy with its\n"
            "provenance; --check compares with a committed policy (exit 1 when a number is outside the margin).\n"
            "Exit: 0 ok, 1 --check not reproduced, 2 usage or input error.\n");
}

/* splits "a,b,c" into up to max items (pointers into a copy) */
static int split(char *s, char **items, int max)
{
    int n = 0;
    for (char *tok = strtok(s, ", "); tok && n < max; tok = strtok(NULL, ", ")) items[n++] = tok;
    return n;
}

int q3n_cmd_calibrate(int argc, char **argv)
{
    char goldens_arg[4096] = "", impls_arg[256] = "ref,cpu", threads_arg[256] = "1,2", chunks_arg[256] = "4,16,64";
    const char *out_path = NULL, *check_path = NULL, *preset = "tiny", *ref64 = NULL;
    double q = 1.0, margin = 10.0, small = 0.1;
    int seeds = 3, per_kind = 0, bf16 = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--goldens") && more) snprintf(goldens_arg, sizeof goldens_arg, "%s", argv[++i]);
        else if (!strcmp(a, "--impls") && more) snprintf(impls_arg, sizeof impls_arg, "%s", argv[++i]);
        else if (!strcmp(a, "--threads") && more) snprintf(threads_arg, sizeof threads_arg, "%s", argv[++i]);
        else if (!strcmp(a, "--chunks") && more) snprintf(chunks_arg, sizeof chunks_arg, "%s", argv[++i]);
        else if (!strcmp(a, "--seeds") && more) seeds = atoi(argv[++i]);
        else if (!strcmp(a, "--synth-preset") && more) preset = argv[++i];
        else if (!strcmp(a, "--quantile") && more) q = strtod(argv[++i], NULL);
        else if (!strcmp(a, "--margin") && more) margin = strtod(argv[++i], NULL);
        else if (!strcmp(a, "--small") && more) small = strtod(argv[++i], NULL);
        else if (!strcmp(a, "--per-kind")) per_kind = 1;
        else if (!strcmp(a, "--ref64") && more) ref64 = argv[++i];
        else if (!strcmp(a, "--dtype") && more) {
            const char *d = argv[++i];
            if (!strcmp(d, "bf16") || !strcmp(d, "bfloat16")) bf16 = 1;
            else if (strcmp(d, "f32") && strcmp(d, "float32")) {
                fprintf(stderr, "q3n calibrate: --dtype must be f32 or bf16\n");
                return 2;
            }
        }
        else if (!strcmp(a, "--out") && more) out_path = argv[++i];
        else if (!strcmp(a, "--check") && more) check_path = argv[++i];
        else {
            fprintf(stderr, "q3n calibrate: bad argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!(q > 0 && q <= 1) || !(margin >= 1) || !(small > 0)) {
        fprintf(stderr, "q3n calibrate: need 0 < --quantile <= 1, --margin >= 1, --small > 0\n");
        return 2;
    }
    struct q3n_error err;
    q3n_error_clear(&err);
    struct q3n_calib c;
    q3n_calib_init(&c, q, margin, small);
    if (bf16) snprintf(c.dtype, sizeof c.dtype, "bfloat16");
    struct q3n_policy *committed = NULL;
    glob_t gl;
    memset(&gl, 0, sizeof gl);
    int rc = 2;
    char impls_copy[256];
    snprintf(impls_copy, sizeof impls_copy, "%s", impls_arg);
    char *impls[8], *threads[8], *chunks[8];
    int n_impls = split(impls_arg, impls, 8), n_threads = split(threads_arg, threads, 8),
        n_chunks = split(chunks_arg, chunks, 8);
    char versions[256] = "", impls_given[256];
    snprintf(impls_given, sizeof impls_given, "%s", impls_arg);

    if (goldens_arg[0]) {
        char *g[64];
        int n = split(goldens_arg, g, 64);
        for (int i = 0; i < n; i++) glob(g[i], i ? GLOB_APPEND : 0, NULL, &gl);
    } else {
        glob("golden/data/*_f32.h5", 0, NULL, &gl);
        glob("golden/data/*_f64.h5", GLOB_APPEND, NULL, &gl);
    }
    for (size_t gi = 0; gi < gl.gl_pathc; gi++) {
        const char *path = gl.gl_pathv[gi];
        struct q3n_golden_run *g = NULL;
        if (q3n_golden_run_open(&g, path, NULL, &err) != Q3N_OK) goto fail;
        if (!versions[0]) {
            char tv[64] = "?", pv[64] = "?";
            struct q3n_error e2;
            q3n_tensorfile_get_attr_str(g->tf, "/", "transformers_version", tv, sizeof tv, &e2);
            q3n_tensorfile_get_attr_str(g->tf, "/", "torch_version", pv, sizeof pv, &e2);
            snprintf(versions, sizeof versions, "goldens from transformers %s, torch %s", tv, pv);
        }
        /* the float64 reference's dump of the same inputs, as a second reference */
        struct q3n_tensorfile *oracle_tf = NULL;
        struct q3n_golden_src oracle;
        char dump[512] = "";
        if (ref64) {
            char ckpt[4096], cmd[8192];
            snprintf(dump, sizeof dump, "/tmp/q3n_calibrate_ref64_%ld_%zu.h5", (long)getpid(), gi);
            if (q3n_verify_checkpoint(ckpt, sizeof ckpt, path, &err) != Q3N_OK) {
                q3n_golden_run_close(g);
                goto fail;
            }
            snprintf(cmd, sizeof cmd, "'%s' run --model '%s' --tokens-from '%s' --impl ref64 --dump '%s' >/dev/null",
                     ref64, ckpt, path, dump);
            if (system(cmd) != 0 || q3n_tensorfile_open(&oracle_tf, dump, &err) != Q3N_OK) {
                if (!err.msg[0]) q3n_error_set(&err, Q3N_ERR_IO, "%s: the ref64 dump failed: %s", path, cmd);
                q3n_golden_run_close(g);
                unlink(dump);
                goto fail;
            }
            q3n_golden_src_tensorfile(&oracle, oracle_tf);
        }
        for (int ii = 0; ii < n_impls; ii++) {
            const struct q3n_impl *impl = q3n_impl_find(impls[ii]);
            if (!impl) continue;
            int is_cpu = !strcmp(impl->name, "cpu");
            int nv = (is_cpu ? n_threads * n_chunks : 1) * (oracle_tf ? 2 : 1);
            for (int v = 0; v < nv; v++) {
                int vo = oracle_tf ? v / 2 : v;
                int against_ref64 = oracle_tf && (v % 2);
                struct q3n_tool_run r;
                q3n_golden_run_tool(&r, g, impl);
                if (against_ref64) r.golden = &oracle;
                r.emulate_bf16 = bf16;
                char src[512];
                const char *vs = against_ref64 ? "the ref64 dump of " : "";
                if (is_cpu) {
                    r.opt.n_threads = atoi(threads[vo / n_chunks]);
                    r.opt.chunk_size = atoi(chunks[vo % n_chunks]);
                    snprintf(src, sizeof src, "%s vs %s%s (threads=%d chunk=%lld)", impl->name, vs, path,
                             r.opt.n_threads, (long long)r.opt.chunk_size);
                } else {
                    snprintf(src, sizeof src, "%s vs %s%s", impl->name, vs, path);
                }
                if (q3n_calib_add_run(&c, &r, src, &err) != Q3N_OK) {
                    q3n_tensorfile_close(oracle_tf);
                    if (dump[0]) unlink(dump);
                    q3n_golden_run_close(g);
                    goto fail;
                }
            }
        }
        q3n_tensorfile_close(oracle_tf);
        if (dump[0]) unlink(dump);
        q3n_golden_run_close(g);
    }
    const struct q3n_impl *ref = q3n_impl_find("ref"), *cpu = q3n_impl_find("cpu");
    for (int s = 1; s <= seeds && ref && cpu; s++) {
        for (int v = 0; v < n_threads * n_chunks; v++) {
            struct q3n_run_options o;
            q3n_run_options_default(&o);
            o.n_threads = atoi(threads[v / n_chunks]);
            o.chunk_size = atoi(chunks[v % n_chunks]);
            char src[256];
            snprintf(src, sizeof src, "cpu (threads=%d chunk=%lld) vs ref on synthetic '%s' seed %d, T=24", o.n_threads,
                     (long long)o.chunk_size, preset, s);
            if (q3n_calib_add_synth(&c, ref, cpu, &o, bf16, preset, (uint64_t)s, 24, src, &err) != Q3N_OK) goto fail;
        }
    }
    if (c.runs == 0) {
        q3n_error_set(&err, Q3N_ERR_USAGE, "no evidence: no golden matched and no synthetic run was possible");
        goto fail;
    }

    char prov[2048], commit[64] = "unknown", host[300] = "?", machine[80] = "?", date[32] = "?";
    FILE *git = popen("git rev-parse --short HEAD 2>/dev/null", "r");
    if (git) {
        if (fgets(commit, sizeof commit, git)) commit[strcspn(commit, "\n")] = '\0';
        if (!commit[0]) snprintf(commit, sizeof commit, "unknown");
        pclose(git);
    }
    struct utsname u;
    if (uname(&u) == 0) {
        snprintf(host, sizeof host, "%.64s %.200s", u.sysname, u.release);
        snprintf(machine, sizeof machine, "%.64s", u.machine);
    }
    time_t now = time(NULL);
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    snprintf(prov, sizeof prov,
             "calibrated: date=%s q3n=%s machine=%s (%s) compiler=gcc %s\n%s\ncommand: q3n calibrate --impls %s "
             "--seeds %d --quantile %g --margin %g --small %g%s%s",
             date, commit, machine, host, __VERSION__, versions[0] ? versions : "no goldens", impls_copy, seeds, q,
             margin, small, ref64 ? " --ref64 " : "", ref64 ? ref64 : "");
    FILE *out = stdout;
    struct q3n_outfile of;
    if (out_path) {
        if (q3n_outfile_open(&of, out_path, &err) != Q3N_OK) goto fail;
        out = of.f;
    }
    if (out_path || !check_path) q3n_calib_write_policy(out, &c, prov, per_kind);
    if (out_path && q3n_outfile_finish(&of, Q3N_OK, &err) != Q3N_OK) goto fail;
    rc = 0;
    if (check_path) {
        int ok = 0;
        if (q3n_policy_load(&committed, check_path, &err) != Q3N_OK ||
            q3n_calib_check(stdout, &c, committed, per_kind, &ok, &err) != Q3N_OK) {
            rc = 2;
            goto fail;
        }
        rc = ok ? 0 : 1;
    }
    goto done;
fail:
    fprintf(stderr, "q3n calibrate: %s\n", err.msg);
done:
    q3n_policy_free(committed);
    globfree(&gl);
    q3n_calib_free(&c);
    return rc;
}
