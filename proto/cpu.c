/* SPDX-License-Identifier: MIT */
#include <stdatomic.h>

#include "cpu.h"

#ifdef TQKV_HAVE_X86_SIMD
#include <cpuid.h>

/* clang 14's __builtin_cpu_supports() does not know "f16c": ask CPUID
 * (leaf 1, ECX bit 29). */
static bool has_f16c(void)
{
	unsigned a, b, c, d;

	return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

static bool probe_isa(enum cpu_isa isa)
{
	switch (isa) {
	case CPU_ISA_SCALAR:
		return true;
#ifdef TQKV_HAVE_X86_SIMD
	case CPU_ISA_AVX2:
		return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
		       has_f16c() && __builtin_cpu_supports("bmi2");
	case CPU_ISA_AVX512:
		return probe_isa(CPU_ISA_AVX2) &&
		       __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
		       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
		       __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
#endif
	default:
		return false;
	}
}

/* CPUID traps to the hypervisor in a VM (microseconds), and attention
 * asks on every call: probe once.  Racing first callers store the same. */
bool cpu_has_isa(enum cpu_isa isa)
{
	static _Atomic unsigned known, has;  /* bit per ISA */
	unsigned bit = 1u << isa;

	if ((unsigned)isa >= CPU_ISA_MAX)
		return false;
	if (!(atomic_load_explicit(&known, memory_order_acquire) & bit)) {
		if (probe_isa(isa))
			atomic_fetch_or_explicit(&has, bit, memory_order_relaxed);
		atomic_fetch_or_explicit(&known, bit, memory_order_release);
	}
	return atomic_load_explicit(&has, memory_order_relaxed) & bit;
}

enum cpu_isa cpu_best_isa(void)
{
	for (int i = CPU_ISA_MAX - 1; i > CPU_ISA_SCALAR; i--)
		if (cpu_has_isa((enum cpu_isa)i))
			return (enum cpu_isa)i;
	return CPU_ISA_SCALAR;
}

const char *cpu_isa_to_string(enum cpu_isa isa)
{
	static const char *const names[CPU_ISA_MAX] = {
		[CPU_ISA_SCALAR] = "scalar",
		[CPU_ISA_AVX2] = "avx2",
		[CPU_ISA_AVX512] = "avx512",
	};

	return (unsigned)isa < CPU_ISA_MAX ? names[isa] : "unknown";
}
