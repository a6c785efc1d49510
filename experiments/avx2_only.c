/* Makes a process see an AVX2-only x86-64 processor, so onnxruntime's MLAS picks the
 * kernels it picks on processors without AVX-512, AVX-VNNI or AMX (its INT8 u8 x s8
 * MatMul then multiplies with VPMADDUBSW, whose 16-bit pair sums saturate).
 *
 *   gcc -shared -fPIC -O2 -o /tmp/avx2_only.so experiments/avx2_only.c -ldl
 *   LD_PRELOAD=/tmp/avx2_only.so python experiments/int8_quality.py ...
 *
 * MLAS chooses its kernels from CPUID once, when it is loaded (platform.cpp; there is
 * no option or environment variable for it). Linux's CPUID faulting (arch_prctl
 * ARCH_SET_CPUID, flag `cpuid_fault` in /proc/cpuinfo) turns every CPUID in this
 * process into SIGSEGV; the handler runs the real CPUID with faulting off and clears
 * the AVX-512, VNNI and AMX bits before returning. The hardware still has them: this
 * changes what libraries choose, which is the point. Faulting is inherited by threads
 * and forks and dropped at exec. numpy reads CPUID at import, so
 * numpy's __cpu_features__["AVX512F"] shows whether the shim is active. Libraries
 * loaded before this one (glibc's own ifuncs) keep their choice, which changes no
 * integer result. SIGSEGV handlers the program installs (Python's faulthandler, which
 * absl and pytest turn on) are kept aside and called for real faults only.
 */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

typedef int (*sigaction_fn)(int, const struct sigaction *, struct sigaction *);
static sigaction_fn real_sigaction;
static struct sigaction program_handler;  /* the program's SIGSEGV handler */

static void cpuid_faulting(int on) {
  syscall(SYS_arch_prctl, ARCH_SET_CPUID, on ? 0 : 1);
}

/* Leaf 7 sub-leaf 0 (Intel SDM vol. 2A, CPUID): EBX AVX512F 16, DQ 17, IFMA 21,
 * PF 26, ER 27, CD 28, BW 30, VL 31; ECX VBMI 1, VBMI2 6, VNNI 11, BITALG 12,
 * VPOPCNTDQ 14; EDX 4VNNIW 2, 4FMAPS 3, VP2INTERSECT 8, AMX-BF16 22, AVX512-FP16 23,
 * AMX-TILE 24, AMX-INT8 25. Sub-leaf 1: EAX AVX-VNNI 4, AVX512-BF16 5, AMX-FP16 21;
 * EDX AVX-VNNI-INT8 4, AVX-NE-CONVERT 5, AVX-VNNI-INT16 10. */
static const unsigned kLeaf7Ebx = 1u << 16 | 1u << 17 | 1u << 21 | 1u << 26 | 1u << 27 |
                                  1u << 28 | 1u << 30 | 1u << 31;
static const unsigned kLeaf7Ecx = 1u << 1 | 1u << 6 | 1u << 11 | 1u << 12 | 1u << 14;
static const unsigned kLeaf7Edx = 1u << 2 | 1u << 3 | 1u << 8 | 1u << 22 | 1u << 23 |
                                  1u << 24 | 1u << 25;
static const unsigned kLeaf71Eax = 1u << 4 | 1u << 5 | 1u << 21;
static const unsigned kLeaf71Edx = 1u << 4 | 1u << 5 | 1u << 10;

static void on_segv(int sig, siginfo_t *info, void *context) {
  ucontext_t *uc = context;
  greg_t *r = uc->uc_mcontext.gregs;
  const unsigned char *ip = (const unsigned char *)r[REG_RIP];
  if (ip[0] != 0x0f || ip[1] != 0xa2) {  /* a real fault: the program's handler */
    if (program_handler.sa_flags & SA_SIGINFO) {
      program_handler.sa_sigaction(sig, info, context);
    } else if (program_handler.sa_handler != SIG_DFL &&
               program_handler.sa_handler != SIG_IGN) {
      program_handler.sa_handler(sig);
    } else {  /* die as usual, once this handler returns */
      struct sigaction dfl;
      memset(&dfl, 0, sizeof dfl);
      dfl.sa_handler = SIG_DFL;
      real_sigaction(sig, &dfl, NULL);
      raise(sig);
    }
    return;
  }
  unsigned leaf = (unsigned)r[REG_RAX], sub = (unsigned)r[REG_RCX], a, b, c, d;
  cpuid_faulting(0);
  __cpuid_count(leaf, sub, a, b, c, d);
  cpuid_faulting(1);
  if (leaf == 7 && sub == 0) {
    b &= ~kLeaf7Ebx;
    c &= ~kLeaf7Ecx;
    d &= ~kLeaf7Edx;
  } else if (leaf == 7 && sub == 1) {
    a &= ~kLeaf71Eax;
    d &= ~kLeaf71Edx;
  }
  r[REG_RAX] = a;
  r[REG_RBX] = b;
  r[REG_RCX] = c;
  r[REG_RDX] = d;
  r[REG_RIP] += 2;
}

/* Interposes libc's sigaction so that ours stays the SIGSEGV handler. */
int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
  if (!real_sigaction) real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  if (sig != SIGSEGV) return real_sigaction(sig, act, old);
  if (old) *old = program_handler;
  if (act) program_handler = *act;
  return 0;
}

__attribute__((constructor)) static void start(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO;
  real_sigaction = (sigaction_fn)dlsym(RTLD_NEXT, "sigaction");
  program_handler.sa_handler = SIG_DFL;
  real_sigaction(SIGSEGV, &sa, NULL);
  if (syscall(SYS_arch_prctl, ARCH_SET_CPUID, 0) != 0) {
    static const char msg[] = "avx2_only: this kernel/processor has no CPUID faulting\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(3);
  }
}
