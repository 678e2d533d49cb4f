/* real.h — math functions at ref_real precision (expf in the float build, exp in ref64), so
 * every transcendental in ref/ rounds where transformers' float32 run rounds. Private to ref/. */
#ifndef Q3N_REF_REAL_H
#define Q3N_REF_REAL_H

#include <math.h>

#include "model.h"

#ifdef Q3N_REF64
#define ref_exp exp
#define ref_log1p log1p
#define ref_sqrt sqrt
#define ref_pow pow
#define ref_cos cos
#define ref_sin sin
#else
#define ref_exp expf
#define ref_log1p log1pf
#define ref_sqrt sqrtf
#define ref_pow powf
#define ref_cos cosf
#define ref_sin sinf
#endif

#endif
