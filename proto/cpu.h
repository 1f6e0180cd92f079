/* SPDX-License-Identifier: MIT */
#ifndef TQKV_PROTO_CPU_H
#define TQKV_PROTO_CPU_H

#include <stdbool.h>

/* Instruction sets the kernels are written for, best last. */
enum cpu_isa {
	CPU_ISA_SCALAR,
	CPU_ISA_AVX2,    /* AVX2 + FMA + F16C */
	CPU_ISA_AVX512,  /* F + BW + VL + DQ + VBMI + VNNI */
	CPU_ISA_MAX
};

/* Whether this CPU (and this build) can run kernels for isa. */
bool cpu_has_isa(enum cpu_isa isa);
/* The best isa this CPU and build support. */
enum cpu_isa cpu_best_isa(void);
const char *cpu_isa_to_string(enum cpu_isa isa);

#endif
