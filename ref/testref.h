/* testref.h — testkit helpers picked for ref_real (float, or double in ref64). Tests only. */
#ifndef Q3N_REF_TESTREF_H
#define Q3N_REF_TESTREF_H

#include "../harness/testkit.h"
#include "model.h"

/* Per-op test tolerances are written for float32 and scaled by this in the float64 build,
 * where the same formulas must agree to ~1e-13. */
#ifdef Q3N_REF64
#define REF_TOL_SCALE 1e-7
#else
#define REF_TOL_SCALE 1.0
#endif

#ifdef Q3N_REF64
#define testkit_guarded_real testkit_guarded_f64
#define testkit_guard_ok_real testkit_guard_ok_f64
#define testkit_poison_real testkit_poison_f64
#else
#define testkit_guarded_real testkit_guarded_f32
#define testkit_guard_ok_real testkit_guard_ok_f32
#define testkit_poison_real testkit_poison_f32
#endif

#endif
