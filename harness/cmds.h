/* cmds.h — the q3n subcommands. Each lives in harness/cmd_<name>.c, parses its own
 * arguments, prints its own output and returns the process exit code:
 * 0 pass, 1 numerical failure, 2 usage or input error. cli.c dispatches. */
#ifndef Q3N_CMDS_H
#define Q3N_CMDS_H

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

#endif
