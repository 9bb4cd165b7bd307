/* Shared-memory collectives between the processes of one node (loaded through ctypes).
 *
 * Segment layout (set by shm.py, which owns the offsets):
 *   [0, world * LINE)          one control line per rank: seq, then two op descriptors
 *   [data_off, ...)            two data buffers of `cap` bytes per rank: rank r, parity p at
 *                              data_off + (2 * r + p) * cap
 *
 * Protocol of one step (sequence number `seq`, identical on all ranks because every rank issues
 * the same collectives in the same order):
 *   1. write my contribution into my buffer of parity seq % 2 and my descriptor of that parity;
 *   2. release-store seq into my control line ("arrive");
 *   3. acquire-load every rank's seq until all are >= seq ("wait"); then read their buffers.
 * Release/acquire on the same 64-bit location makes every write of step 1 visible to a reader
 * that observed the new seq (C11 synchronizes-with; address-free lock-free atomics also hold
 * across processes mapping the same page). On x86 both are plain moves plus a compiler barrier;
 * on ARM they become stlr/ldar. No step ever waits for fewer than all ranks, so a rank that
 * starts step seq + 2 (reusing the parity of step seq) has seen every rank arrive at seq + 1,
 * i.e. finish reading step seq: two buffers per rank are enough and no rank can run ahead.
 * A peer's descriptor is read at the same parity for the same reason (it cannot be
 * overwritten before we arrive at seq + 1).
 */
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define CPU_RELAX() __asm__ __volatile__("yield" ::: "memory")
#else
#define CPU_RELAX() __asm__ __volatile__("" ::: "memory")
#endif

#define LINE 128      /* control line per rank: two cache lines, so the adjacent-line
                         prefetcher does not make neighbours' flags share traffic */
#define SPIN_ITERS 256 /* busy-wait this long (~10-30 us) before yielding the core: on a
                          machine with more runnable threads than cores the peer may be
                          descheduled, and spinning would then only delay it */
#define NAP_AFTER_S 1e-3 /* after this long, sleep between checks: a rank waiting for a slow
                            peer (e.g. rank 0 scheduling) should not burn a core others need;
                            the nap adds at most NAP_NS to a wait already this long */
#define NAP_NS 50000

static inline uint64_t *ctl(char *base, int r) { return (uint64_t *)(base + (size_t)r * LINE); }

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Arrive at step `seq` with descriptor (w0, w1), wait for all ranks, check their descriptors.
 * Returns 0, or 1 + r when rank r had not arrived after timeout_s seconds, or -(1 + r) when
 * rank r arrived with a different descriptor (a different collective or size). */
int shm_sync(char *base, int rank, int world, uint64_t seq, uint64_t w0, uint64_t w1,
             double timeout_s) {
  uint64_t *me = ctl(base, rank);
  int p = (int)(seq & 1);
  __atomic_store_n(&me[1 + 2 * p], w0, __ATOMIC_RELAXED);
  __atomic_store_n(&me[2 + 2 * p], w1, __ATOMIC_RELAXED);
  __atomic_store_n(&me[0], seq, __ATOMIC_RELEASE);
  double start = -1.0; /* of the first wait past the spin phase */
  for (int r = 0; r < world; ++r) {
    uint64_t *c = ctl(base, r);
    for (long i = 0; __atomic_load_n(&c[0], __ATOMIC_ACQUIRE) < seq; ++i) {
      if (i < SPIN_ITERS) {
        CPU_RELAX();
        continue;
      }
      double t = now_s(); /* vDSO clock read: cheap next to the yield's system call */
      if (start < 0) start = t;
      if (t - start > timeout_s) return 1 + r;
      if (t - start < NAP_AFTER_S) {
        sched_yield();
      } else {
        struct timespec nap = {0, NAP_NS};
        nanosleep(&nap, NULL);
      }
    }
    if (__atomic_load_n(&c[1 + 2 * p], __ATOMIC_RELAXED) != w0 ||
        __atomic_load_n(&c[2 + 2 * p], __ATOMIC_RELAXED) != w1)
      return -(1 + r);
  }
  return 0;
}

/* In-place fp32 sum all-reduce of x[0:n], in chunks of cap bytes (steps seq, seq + 1, ...).
 * Every rank adds the ranks' buffers in rank order, ((b0 + b1) + b2) + ..., element by
 * element, so all ranks get bit-identical results (no -ffast-math: no reassociation).
 * (w0, w1) is the descriptor checked at every step. Returns as shm_sync; *done_steps is the
 * number of steps taken (for the caller's seq). */
int shm_allreduce_f32(char *base, size_t data_off, size_t cap, int rank, int world,
                      uint64_t seq, float *x, int64_t n, uint64_t w0, uint64_t w1,
                      double timeout_s, int64_t *done_steps) {
  const int64_t per = (int64_t)(cap / sizeof(float));
  int64_t steps = 0;
  for (int64_t off = 0; off < n; off += per, ++steps) {
    const int64_t m = (n - off < per) ? n - off : per;
    const uint64_t s = seq + (uint64_t)steps;
    const int p = (int)(s & 1);
    float *mine = (float *)(base + data_off + (size_t)(2 * rank + p) * cap);
    memcpy(mine, x + off, (size_t)m * sizeof(float));
    int rc = shm_sync(base, rank, world, s, w0, w1, timeout_s);
    if (rc != 0) {
      *done_steps = steps + 1;
      return rc;
    }
    float *restrict out = x + off;
    const float *restrict b0 = (const float *)(base + data_off + (size_t)p * cap);
    if (world == 1) continue; /* x already holds the only contribution */
    const float *restrict b1 = (const float *)(base + data_off + (size_t)(2 + p) * cap);
    for (int64_t i = 0; i < m; ++i) out[i] = b0[i] + b1[i];
    for (int r = 2; r < world; ++r) {
      const float *restrict br = (const float *)(base + data_off + (size_t)(2 * r + p) * cap);
      for (int64_t i = 0; i < m; ++i) out[i] += br[i];
    }
  }
  *done_steps = steps;
  return 0;
}
