/* cmds.h — the q3n subcommands. Each lives in harness/cmd_<name>.c, parses its own
 * arguments, prints its own output and returns the process exit code:
 * 0 pass, 1 numerical failure, 2 usage or input error. cli.c dispatches. */
#ifndef Q3N_CMDS_H
#define Q3N_CMDS_H

#include <stddef.h>
#include <stdint.h>

int q3n_cmd_inspect(int argc, char **argv);
int q3n_cmd_run(int argc, char **argv);
int q3n_cmd_verify(int argc, char **argv);
int q3n_cmd_compare(int argc, char **argv);
int q3n_cmd_report(int argc, char **argv);
int q3n_cmd_bench(int argc, char **argv);
int q3n_cmd_bench_cuda(int argc, char **argv); /* `q3n bench --impl cuda` (cmd_bench_cuda.c) */
int q3n_cmd_fuzz(int argc, char **argv);
int q3n_cmd_blame(int argc, char **argv);
int q3n_cmd_bisect_precision(int argc, char **argv);
int q3n_cmd_bisect_layers(int argc, char **argv);
int q3n_cmd_determinism(int argc, char **argv);
int q3n_cmd_baseline(int argc, char **argv);
int q3n_cmd_isolate(int argc, char **argv);
int q3n_cmd_calibrate(int argc, char **argv);
int q3n_cmd_roofline(int argc, char **argv);

/* Shared by the bench commands (cmd_bench_tf.c). */
struct q3n_model;
/* The transformers-on-the-CPU run of `q3n bench --versus-transformers`: its Python and script, the
 * prompt length and decode steps, torch's thread count (0: its default), prefill repetitions, and
 * q3n's own figures to compare with. */
struct q3n_bench_tf {
    const char *python, *script;
    int64_t T, N;
    int threads, repeat;
    double q3n_prefill_s, q3n_decode_ms;
};
/* Writes model as a float32 checkpoint with tokens[0 .. T+N) and q3n's last-token prefill logits
 * into a temporary folder, runs the script on them, relays its RESULT lines with q3n's speed-ups,
 * removes the folder. 0: done and the logits agree; 1: the script failed or the logits disagree
 * (rel L2 > 1e-4); 2: setup error. */
int q3n_bench_versus_transformers_cpu(const struct q3n_model *model, const int64_t *tokens, const float *last_logits,
                                      const struct q3n_bench_tf *a);
/* Removes the files of a flat folder, then the folder. */
void q3n_bench_remove_flat_dir(const char *dir);
/* Runs the shell command cmd (its stderr joined to stdout by the caller's 2>&1), relays to stdout,
 * indented by two spaces, each line that starts with one of the NULL-terminated prefixes and hands
 * it to on_line; last (when last_cap > 0) receives the last line of any kind, without its newline.
 * Returns pclose's status, or -1 when the command could not be started. */
int q3n_bench_relay(const char *cmd, const char *const *prefixes, void (*on_line)(const char *line, void *ctx),
                    void *ctx, char *last, size_t last_cap);

#endif
