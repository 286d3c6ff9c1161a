/*
 * Host-only measurement aid for benches/scope.rs's callgrind mode (not built
 * by cargo, not part of the crate): an LD_PRELOAD shim whose prctl() answers
 * PR_SET_IO_FLUSHER (57) and PR_GET_IO_FLUSHER (58) with 0 without entering
 * the kernel, so that on a host without CAP_SYS_RESOURCE the outermost
 * scope's whole success path runs. The raw pair and the scope call the same
 * shim, so the difference of their counts is the crate's own code; for the
 * 0.1 engine it gave the same +234 instructions as the real kernel in the VM,
 * and +77 for the engine of 866f632 (VM: 163 against 86, host: 155 against 78).
 * Every other option goes to the real syscall.
 *
 *   cc -O2 -shared -fPIC -o /tmp/prctl_stub.so benches/tools/prctl_stub.c
 *   LD_PRELOAD=/tmp/prctl_stub.so SCOPE_BENCH_CALLGRIND=outermost \
 *     SCOPE_BENCH_ITERS=20000 valgrind --tool=callgrind \
 *     --toggle-collect='*callgrind_loop*' <scope bench binary> --bench
 *
 * Never use it for anything but counting: the thread is NOT flagged.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <sys/syscall.h>
#include <unistd.h>

int prctl(int option, ...)
{
	va_list ap;
	va_start(ap, option);
	unsigned long a2 = va_arg(ap, unsigned long);
	unsigned long a3 = va_arg(ap, unsigned long);
	unsigned long a4 = va_arg(ap, unsigned long);
	unsigned long a5 = va_arg(ap, unsigned long);
	va_end(ap);
	if (option == 57 || option == 58)
		return 0;
	return syscall(SYS_prctl, option, a2, a3, a4, a5);
}
