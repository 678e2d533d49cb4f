/* bench_pdl.cu — what a kernel boundary costs on this GPU, and how much of it programmatic
 * dependent launch (PDL) takes back. A probe for the prefill and decode chains, where dozens of
 * dependent kernels of a few microseconds each follow one another in one stream.
 *
 * A chain of N launches of one small kernel (each block reads and writes its own slice of a float
 * buffer: x = 0.5 x + 1, so every launch depends on the previous one's output), in four modes:
 *   eager        plain launches in a stream
 *   eager+pdl    cudaLaunchKernelEx with programmatic stream serialisation; the kernel waits for its
 *                predecessor (griddepcontrol.wait) before touching the buffer and lets its successor
 *                launch early (griddepcontrol.launch_dependents) right after that wait
 *   graph        the eager chain captured into a CUDA graph and replayed
 *   graph+pdl    the PDL chain captured (the programmatic edges survive capture)
 * Time per launch = events around the whole chain / N (best of reps). The difference between a
 * mode and its +pdl mode is what PDL saves per boundary; per launch minus the kernel's own time
 * (the chain of one launch, `single`) is the boundary's cost. The result is checked: after the chain
 * every element must equal the closed form of N steps (exact in float32 for these values).
 *   bench_pdl [--n 200] [--reps 20] */
#include "devkit.cuh" /* CK */

/* x = 0.5 x + 1 over this block's slice; PDL: wait for the predecessor grid (its writes visible),
 * then allow the successor to launch. */
template <bool PDL>
__global__ void step_kernel(float *x, int per_block)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (PDL) {
        asm volatile("griddepcontrol.wait;" ::: "memory");
        asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
    }
#endif
    float *p = x + (size_t)blockIdx.x * per_block;
    for (int i = threadIdx.x; i < per_block; i += blockDim.x) p[i] = 0.5f * p[i] + 1.0f;
}

static void launch(bool pdl, cudaStream_t st, float *x, int blocks, int per_block)
{
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute at[1];
    cfg.gridDim = dim3(blocks);
    cfg.blockDim = dim3(256);
    cfg.stream = st;
    if (pdl) {
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        CK(cudaLaunchKernelEx(&cfg, step_kernel<true>, x, per_block));
    } else {
        CK(cudaLaunchKernelEx(&cfg, step_kernel<false>, x, per_block));
    }
}

/* Best time per launch (us) of a chain of n launches, eager or replayed from a graph; the buffer is
 * checked against n steps of x = 0.5 x + 1 from x = 0 after the last rep. */
static double chain(bool pdl, bool graph, int n, int reps, cudaStream_t st, float *x, int blocks, int per_block)
{
    cudaGraphExec_t ge = NULL;
    if (graph) {
        cudaGraph_t g;
        CK(cudaStreamBeginCapture(st, cudaStreamCaptureModeGlobal));
        for (int i = 0; i < n; i++) launch(pdl, st, x, blocks, per_block);
        CK(cudaStreamEndCapture(st, &g));
        CK(cudaGraphInstantiate(&ge, g, 0));
        CK(cudaGraphDestroy(g));
    }
    cudaEvent_t a, b;
    CK(cudaEventCreate(&a));
    CK(cudaEventCreate(&b));
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        CK(cudaMemsetAsync(x, 0, sizeof(float) * (size_t)blocks * per_block, st));
        CK(cudaEventRecord(a, st));
        if (graph)
            CK(cudaGraphLaunch(ge, st));
        else
            for (int i = 0; i < n; i++) launch(pdl, st, x, blocks, per_block);
        CK(cudaEventRecord(b, st));
        CK(cudaEventSynchronize(b));
        float ms;
        CK(cudaEventElapsedTime(&ms, a, b));
        if (ms * 1e3 / n < best) best = ms * 1e3 / n;
    }
    float want = 0.0f, got;
    for (int i = 0; i < n; i++) want = 0.5f * want + 1.0f;
    const size_t last = (size_t)blocks * per_block - 1;
    CK(cudaMemcpy(&got, x + last, sizeof got, cudaMemcpyDeviceToHost));
    if (got != want) {
        fprintf(stderr, "bench_pdl: chain of %d (%s%s) left %.9g, want %.9g\n", n, graph ? "graph" : "eager",
                pdl ? "+pdl" : "", got, want);
        exit(1);
    }
    if (ge) CK(cudaGraphExecDestroy(ge));
    CK(cudaEventDestroy(a));
    CK(cudaEventDestroy(b));
    return best;
}

int main(int argc, char **argv)
{
    int n = 200, reps = 20;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--n"))
            n = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reps"))
            reps = atoi(argv[i + 1]);
    }
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    printf("bench_pdl: %s, %d SMs, chains of %d launches, best of %d\n", prop.name, prop.multiProcessorCount, n,
           reps);
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    /* kernel sizes: a tiny one (1 block), one wave of small blocks, and ~4 MB per launch */
    const int shapes[][2] = {{1, 256}, {132, 1024}, {1056, 1024}};
    float *x;
    CK(cudaMalloc(&x, sizeof(float) * 1056 * 1024));
    for (const auto &s : shapes) {
        const int blocks = s[0] * prop.multiProcessorCount / 132 > 0 ? s[0] * prop.multiProcessorCount / 132 : 1;
        const double single = chain(false, false, 1, reps, st, x, blocks, s[1]);
        const double e = chain(false, false, n, reps, st, x, blocks, s[1]);
        const double ep = chain(true, false, n, reps, st, x, blocks, s[1]);
        const double g = chain(false, true, n, reps, st, x, blocks, s[1]);
        const double gp = chain(true, true, n, reps, st, x, blocks, s[1]);
        printf("blocks %4d x %5d floats: single %.2f us; per launch eager %.2f, eager+pdl %.2f (%.2f saved), "
               "graph %.2f, graph+pdl %.2f (%.2f saved)\n",
               blocks, s[1], single, e, ep, e - ep, g, gp, g - gp);
    }
    CK(cudaFree(x));
    CK(cudaStreamDestroy(st));
    return 0;
}
