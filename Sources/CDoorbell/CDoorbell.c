#include "CDoorbell.h"

uint32_t rm_bell_read(const uint32_t *bell) { return __atomic_load_n(bell, __ATOMIC_ACQUIRE); }

void rm_bell_ring(uint32_t *bell, uint32_t value) { __atomic_store_n(bell, value, __ATOMIC_RELEASE); }

void rm_fence(void) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

void rm_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}
