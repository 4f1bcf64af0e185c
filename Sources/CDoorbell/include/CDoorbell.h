#ifndef RINGMASTER_CDOORBELL_H
#define RINGMASTER_CDOORBELL_H

#include <stdint.h>

/* Doorbells: 32-bit counters in memory shared between the agent and its PyTorch workers, each
   raised by one process and read by the others (docs/worker-protocol.md, "Doorbells"). Swift has
   no atomics on memory it did not allocate itself, so the loads and stores are here. */

/* The counter's value; what its writer stored before raising it is visible after this load. */
uint32_t rm_bell_read(const uint32_t *bell);

/* Raises the counter to value, after every store that came before it. */
void rm_bell_ring(uint32_t *bell, uint32_t value);

/* A full fence: the stores before it are seen by every other CPU before the loads after it are made
   (what two sides need that each store a flag, then read the other's). */
void rm_fence(void);

/* Tells the CPU this thread is spinning (x86 `pause`), so that a sibling hyperthread runs faster. */
void rm_cpu_relax(void);

#endif
