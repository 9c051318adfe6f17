/* The GEMM engine's own worker pool (included by gemm.c): runs chunks 0..n-1 of a
 * job on the calling thread and up to nthreads - 1 persistent workers, each chunk
 * claimed dynamically, so a worker that the OS has not scheduled yet simply
 * takes no chunk and the caller never waits for it.
 *
 * Why not an OpenMP parallel region: a region's team is fixed when it starts and
 * the caller must meet every member at the closing barrier.  On a machine whose
 * cores are shared with other processes a team member regularly waits a whole
 * time slice to run, and the call stalls for milliseconds: measured on the
 * 2-core bench machine under a load average of ~7, a 2-thread predict of 1000
 * MNIST images through 784-128-10 took a median 34 ms against 2.2 ms for
 * onnxruntime, whose pool claims work dynamically like this one.  Here the
 * caller waits only for chunks a worker has actually claimed.
 *
 * Chunk boundaries are fixed by the caller from the shape alone, and a chunk is
 * computed the same way whoever runs it, so results never depend on which
 * thread ran what (the engine's bitwise contract holds).
 *
 * The caller claims chunks from the front (0, 1, ...), the workers from the back
 * (n-1, n-2, ...), until the two ends meet.  A late worker still only takes what
 * the caller has not reached, and back-to-back calls of one shape give each thread
 * nearly the same chunks every time, so the C columns (and B panels) a thread
 * wrote stay in its own core's L2: in one run (784x128x512, two threads, calls
 * interleaved, load average ~4.5) 32 chunks all claimed from the front ran at 116
 * GFLOP/s against 179 for a fixed half per thread; from both ends, 184 vs 181.
 *
 * Workers spin briefly after each job (the next GEMM of a forward pass follows
 * within microseconds), then sleep on a condition variable.  One job at a time
 * per process: a second concurrent caller (another Python thread, a caller
 * inside an OpenMP region) runs its chunks on its own thread.  A forked child
 * starts with no workers.
 */

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#if defined(__linux__) && defined(_GNU_SOURCE)
#include <sched.h>
#define FNN_POOL_CAN_MIGRATE 1
#else
#define FNN_POOL_CAN_MIGRATE 0
#endif

#ifndef FNN_POOL_MAX
#define FNN_POOL_MAX 64             /* workers at most (nthreads - 1) */
#endif
/* Pause iterations a worker spins before it sleeps: 2000 is ~57 us on Zen 4 (28 ns a
 * pause): long enough for the next GEMM of a forward pass (1-10 us later), short
 * enough not to hold a core that an OpenMP team (libgomp spins too) or another
 * process needs. */
#ifndef FNN_POOL_SPIN
#define FNN_POOL_SPIN 2000
#endif

typedef void (*fnn_chunk_fn)(void *arg, ptrdiff_t chunk);

typedef struct {
    pthread_mutex_t job_lock;            /* held by the caller of the running job */
    int nworkers;                        /* started */
    /* the job: published before `gen` */
    fnn_chunk_fn fn;
    void *arg;
    ptrdiff_t nchunks;
    int helpers;                         /* workers with index < helpers take part */
    _Atomic uint64_t ticket;             /* (generation << 32) | (end << 16) | next */
    _Atomic int64_t done;                /* chunks finished in this generation */
    _Atomic uint32_t gen;
    /* sleeping workers */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic int sleepers;
    _Atomic int caller_cpu;              /* the CPU the caller woke the sleepers from, or -1 */
    int migrate;                         /* FASTNN_POOL_MIGRATE (default 1): see below */
} fnn_pool_t;

static fnn_pool_t g_pool = {PTHREAD_MUTEX_INITIALIZER, 0, NULL, NULL, 0, 0, 0, 0, 0,
                            PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, -1, 1};
static pthread_once_t g_pool_once = PTHREAD_ONCE_INIT;

static inline void fnn_pool_pause(void)
{
#if FNN_X86
    _mm_pause();
#endif
}

#define FNN_POOL_MAX_CHUNKS 0xFFFF      /* the ticket's two 16-bit ends */

/* Claim and run chunks of generation g until none is left: the front one
 * (the caller) or the back one (workers). */
static void fnn_pool_work(uint32_t g, int back)
{
    for (;;) {
        uint64_t t = atomic_load_explicit(&g_pool.ticket, memory_order_acquire);
        if ((uint32_t)(t >> 32) != g)
            return;
        ptrdiff_t lo = (ptrdiff_t)(t & 0xFFFF), hi = (ptrdiff_t)((t >> 16) & 0xFFFF);
        if (lo >= hi)
            return;
        ptrdiff_t c = back ? hi - 1 : lo;
        uint64_t next = back ? t - ((uint64_t)1 << 16) : t + 1;
        /* fn and arg are stable while generation g has an unfinished chunk (ours, once
         * the CAS succeeds); read after claiming */
        if (!atomic_compare_exchange_weak_explicit(&g_pool.ticket, &t, next,
                                                   memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        g_pool.fn(g_pool.arg, c);
        atomic_fetch_add_explicit(&g_pool.done, 1, memory_order_release);
    }
}

/* A worker woken from its condition variable is placed by Linux on the CPU of the
 * thread that woke it (the caller, which goes on computing), and the load balancer
 * moves it to the idle core only milliseconds later: measured (issue 12), after a
 * 0.15 s pause a 2-thread 64x784x128 GEMM ran at one core's speed (57-88 GFLOP/s)
 * for its first 20-30 calls, and at 124-134 from the second call on with the two
 * threads pinned apart.  So a woken worker that finds itself on the caller's CPU
 * steps off it: its affinity mask without that CPU for one call (the kernel moves it
 * at once), then the mask it had.  Nothing is pinned, and a worker that woke
 * elsewhere, or spun, makes no system call.  FASTNN_POOL_MIGRATE=0 turns it off. */
static void fnn_pool_step_off_caller_cpu(void)
{
#if FNN_POOL_CAN_MIGRATE
    int caller = atomic_load_explicit(&g_pool.caller_cpu, memory_order_relaxed);
    if (!g_pool.migrate || caller < 0 || caller >= CPU_SETSIZE || sched_getcpu() != caller)
        return;
    cpu_set_t mask, off;
    pthread_t self = pthread_self();
    if (pthread_getaffinity_np(self, sizeof mask, &mask) != 0 || !CPU_ISSET(caller, &mask))
        return;
    off = mask;
    CPU_CLR(caller, &off);
    if (CPU_COUNT(&off) == 0)
        return;
    if (pthread_setaffinity_np(self, sizeof off, &off) == 0)
        pthread_setaffinity_np(self, sizeof mask, &mask);
#endif
}

static void *fnn_pool_main(void *p)
{
    int me = (int)(intptr_t)p;
    uint32_t seen = atomic_load(&g_pool.gen);
    for (;;) {
        uint32_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&g_pool.gen, memory_order_acquire)) == seen) {
            if (++spins < FNN_POOL_SPIN) {
                fnn_pool_pause();
                continue;
            }
            pthread_mutex_lock(&g_pool.mu);
            atomic_fetch_add(&g_pool.sleepers, 1);
            while (atomic_load(&g_pool.gen) == seen)
                pthread_cond_wait(&g_pool.cv, &g_pool.mu);
            atomic_fetch_sub(&g_pool.sleepers, 1);
            pthread_mutex_unlock(&g_pool.mu);
            fnn_pool_step_off_caller_cpu();
            spins = 0;
        }
        seen = g;
        /* helpers is published before gen; a stale read only makes us skip or
         * try a job whose ticket already moved on (fnn_pool_work checks) */
        if (me < g_pool.helpers)
            fnn_pool_work(g, 1);
    }
    return NULL;
}

static void fnn_pool_atfork_child(void)
{
    /* the workers do not exist in the child */
    pthread_mutex_init(&g_pool.job_lock, NULL);
    pthread_mutex_init(&g_pool.mu, NULL);
    pthread_cond_init(&g_pool.cv, NULL);
    g_pool.nworkers = 0;
    atomic_store(&g_pool.sleepers, 0);
}

static void fnn_pool_init(void)
{
    const char *m = getenv("FASTNN_POOL_MIGRATE");
    g_pool.migrate = !(m && m[0] == '0' && m[1] == '\0');
    pthread_atfork(NULL, NULL, fnn_pool_atfork_child);
}

/* Run fn(arg, c) for c in [0, nchunks) on up to nthreads threads (the caller
 * included); returns when every chunk has run. */
static void fnn_pool_run(fnn_chunk_fn fn, void *arg, ptrdiff_t nchunks, int nthreads)
{
    if (nchunks <= 0)
        return;
    if (nthreads > FNN_POOL_MAX + 1)
        nthreads = FNN_POOL_MAX + 1;
    if (nthreads > nchunks)
        nthreads = (int)nchunks;
    pthread_once(&g_pool_once, fnn_pool_init);
    if (nthreads <= 1 || nchunks > FNN_POOL_MAX_CHUNKS ||
        pthread_mutex_trylock(&g_pool.job_lock) != 0) {
        for (ptrdiff_t c = 0; c < nchunks; c++)
            fn(arg, c);
        return;
    }
    while (g_pool.nworkers < nthreads - 1) {
        pthread_t th;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        int ok = pthread_create(&th, &at, fnn_pool_main, (void *)(intptr_t)g_pool.nworkers) == 0;
        pthread_attr_destroy(&at);
        if (!ok)
            break;
        g_pool.nworkers++;
    }
    int helpers = nthreads - 1 < g_pool.nworkers ? nthreads - 1 : g_pool.nworkers;
    uint32_t g = atomic_load(&g_pool.gen) + 1;
    if (g == 0)
        g = 1;
    g_pool.fn = fn;
    g_pool.arg = arg;
    g_pool.nchunks = nchunks;
    g_pool.helpers = helpers;
    atomic_store(&g_pool.done, 0);
    atomic_store(&g_pool.ticket, ((uint64_t)g << 32) | ((uint64_t)nchunks << 16));
    atomic_store(&g_pool.gen, g);                       /* seq_cst: see the sleepers */
    if (helpers > 0 && atomic_load(&g_pool.sleepers) > 0) {
#if FNN_POOL_CAN_MIGRATE
        atomic_store_explicit(&g_pool.caller_cpu, g_pool.migrate ? sched_getcpu() : -1,
                              memory_order_relaxed);
#endif
        pthread_mutex_lock(&g_pool.mu);
        pthread_cond_broadcast(&g_pool.cv);
        pthread_mutex_unlock(&g_pool.mu);
    }
    fnn_pool_work(g, 0);
    /* chunks claimed by workers are running: wait for them */
    while (atomic_load_explicit(&g_pool.done, memory_order_acquire) < nchunks)
        fnn_pool_pause();
    pthread_mutex_unlock(&g_pool.job_lock);
}
