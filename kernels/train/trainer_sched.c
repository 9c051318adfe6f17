/* The fused trainer's scheduler: task sizes, owners, claiming and stealing,
 * the one-thread fallback with its back-off, the per-phase profile (see
 * trainer_sched.h for the design; trainer_step.c says what a task computes). */
#include "trainer_sched.h"

#include <math.h>
#include <stdlib.h>
#include <time.h>

/* ------------------------------------------------------------ task sizes */

#define FLOPS_PER_TASK 131072.0      /* ~1-2 us of work at least */
#define TASKS_PER_THREAD 32          /* per thread and GEMM at most (see fnn_tr_grid) */

grid_t fnn_tr_grid(int64_t M, int64_t N, int64_t K, int nthreads)
{
    grid_t g;
    int64_t ntm = (M + MR - 1) / MR, ntn = (N + NR - 1) / NR;
    double tile = 2.0 * MR * NR * (double)(K > 0 ? K : 1);
    /* at least FLOPS_PER_TASK of work, and no more than ~TASKS_PER_THREAD tasks per
     * thread: every task costs two atomics on lines the other cores poll */
    int64_t per_flops = (int64_t)ceil(FLOPS_PER_TASK / tile);
    int64_t per_count = ntm * ntn / ((int64_t)TASKS_PER_THREAD * (nthreads > 0 ? nthreads : 1));
    g.per = per_flops > per_count ? per_flops : per_count;
    if (g.per < 1) g.per = 1;
    if (g.per > ntm) g.per = ntm;
    g.nchunks = (ntm + g.per - 1) / g.per;
    g.ntasks = g.nchunks * ntn;
    return g;
}

/* ---------------------------------------------------------------- owners */

/* Every phase's tasks (a backward phase's dX, dW and bias ranges separately,
 * so that each thread gets its share of each kind) are split into nthreads
 * contiguous runs; thread t owns run t of each.  Measured on 2 cores: owning
 * the same column panels step after step keeps W and the optimizer state in
 * one core's cache (7-10 % of the epoch for mlp and softmax, against
 * threads taking the next task from a shared counter). */
void fnn_tr_assign_owners(run_t *R)
{
    const int T = R->nthreads;
    int64_t k = 0;
    for (int t = 0; t < T; t++) {
        R->mine_at[t] = k;
        for (int p = 0; p < R->nph; p++) {
            const phase_t *ph = &R->ph[p];
            int64_t cuts[4] = {0, ph->ntasks, ph->ntasks, ph->ntasks};
            if (ph->kind == FNN_PHASE_BACKWARD) {
                cuts[1] = ph->gx.ntasks;
                cuts[2] = ph->gx.ntasks + ph->gw.ntasks;
            }
            for (int r = 0; r < 3; r++) {
                int64_t lo = cuts[r], n = cuts[r + 1] - cuts[r];
                for (int64_t i = n * t / T; i < n * (t + 1) / T; i++)
                    R->mine[k++] = (int32_t)(ph->first + lo + i);
            }
        }
    }
    R->mine_at[T] = k;
}

/* ----------------------------------------------------- the shared state */

/* A ticket is a task's place in the whole call: step * per_step + its index
 * in the step.  The tickets are cut into chunks of whole steps. */
typedef struct {
    int64_t *claim;                     /* per task of a step: the last step it was claimed in */
    int64_t *done, *stop_step;          /* accessed with __atomic builtins */
    int *solo;                          /* -1, or the one thread that carries on alone */
    int *solo_chunks;                   /* chunks in which a thread went solo */
    int *streak, *hold;                 /* consecutive chunks that went solo; chunks
                                         * still to run solo before the team retries */
    int64_t chunk_tk;                   /* tickets per chunk of steps */
} sched_t;

/* ------------------------------------------------------ solo fallback */

/* Fallback to one thread.  A wait of more than a few microseconds means the
 * thread we wait for lost its core to another job (a task takes
 * microseconds).  A partner descheduled for one time slice (a few ms) only
 * costs that slice; but when this thread's long waits in the current chunk of
 * steps add up to more than SOLO_MIN_S and SOLO_FRAC of the chunk's time so
 * far, two threads are no faster than one: the waiter carries on alone to the
 * end of the chunk (the others sleep, leaving their core to the other jobs)
 * and the next chunk starts with the whole team again.  So a hiccup costs at
 * most one chunk (~0.15 s of work) at one-thread speed, never the rest of an
 * epoch.  When the machine stays busy, every retry costs its waits: after k
 * chunks in a row went solo, the next 2^(k-1) - 1 (at most SOLO_HOLD_MAX)
 * chunks run solo before the team tries again (carried over to the next
 * call).  Results do not change: no task depends on which thread runs it. */
#define SOLO_MIN_S 5e-3              /* waits below a couple of time slices never go solo */
#define SOLO_FRAC 0.25               /* waiting a quarter of the time: 2 threads gain nothing */
#define CHUNK_FLOPS 1.5e10           /* ~0.15-0.2 s of work on one core */
/* The back-off doubles for SOLO_HOLD_DOUBLINGS chunks in a row, up to
 * SOLO_HOLD_MAX = 15 chunks (~2-3 s of work) solo between retries: a failed
 * retry then costs its waits once per 16 chunks, and a machine that became
 * free is noticed within a few seconds. */
#define SOLO_HOLD_DOUBLINGS 4
#define SOLO_HOLD_MAX ((1 << SOLO_HOLD_DOUBLINGS) - 1)
/* Pauses a waiting thread spins before it reads the clock (a few to tens of
 * us, depending on the core's pause): the ordinary waits for the task before,
 * a task or two long, stay off the clock; only longer ones count as lost time. */
#define SPINS_BEFORE_CLOCK 1024
/* How long a thread sidelined by the fallback sleeps between looks at the
 * solo flag: 0.2 ms, about 1/1000 of a chunk, so it rejoins the team soon after
 * the chunk ends, yet waking 5000 times a second costs the other jobs nothing
 * measurable. */
#define SOLO_NAP_NS 200000

/* Chunks to hold solo after the k-th chunk in a row that went solo. */
static inline int solo_hold_after(int k)
{
    return k > SOLO_HOLD_DOUBLINGS ? SOLO_HOLD_MAX : (1 << (k - 1)) - 1;
}

typedef struct {               /* one thread's waits in its current chunk */
    int64_t chunk;
    double t0, waited;
} pace_t;

static void go_solo(const sched_t *sc, int tid)
{
    int none = -1;
    if (__atomic_compare_exchange_n(sc->solo, &none, tid, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(sc->solo_chunks, 1, __ATOMIC_RELAXED);
        int k = __atomic_add_fetch(sc->streak, 1, __ATOMIC_RELAXED);
        __atomic_store_n(sc->hold, solo_hold_after(k), __ATOMIC_RELAXED);
    }
}

/* At the first ticket of a chunk (taken by whichever thread): the team again,
 * unless the chunks before went solo and the back-off holds this one too.
 * The fields are hints that only steer who runs tasks, never results. */
static void new_chunk(const sched_t *sc, int tid)
{
    int so = __atomic_load_n(sc->solo, __ATOMIC_ACQUIRE);
    if (so < 0) {
        __atomic_store_n(sc->streak, 0, __ATOMIC_RELAXED);
    } else if (so == tid && __atomic_load_n(sc->hold, __ATOMIC_RELAXED) > 0) {
        __atomic_fetch_sub(sc->hold, 1, __ATOMIC_RELAXED);
        __atomic_fetch_add(sc->solo_chunks, 1, __ATOMIC_RELAXED);
    } else {
        __atomic_store_n(sc->solo, -1, __ATOMIC_RELEASE);
    }
}

/* ---------------------------------------------------------------- timing */

static inline void cpu_relax(void)
{
#if FNN_X86
    _mm_pause();
#endif
}

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {                 /* one thread's profile: CPU time per phase, and waits */
    double *out, t[MAX_PHASES + 1], tcur;
    int pcur;
} prof_t;

static void prof_switch(prof_t *pf, int slot)
{
    if (!pf->out || slot == pf->pcur) return;
    double t = cpu_s();
    if (pf->pcur >= 0) pf->t[pf->pcur] += t - pf->tcur;
    pf->pcur = slot;
    pf->tcur = t;
}

/* ------------------------------------------------------------- the worker */

/* The phase of task `loc` of a step. */
static int phase_of(const run_t *R, int64_t loc)
{
    int p = 0;
    while (p + 1 < R->nph && R->ph[p + 1].first <= loc) p++;
    return p;
}

/* Claims task `loc` of step s: 1 when this thread is to run it. */
static inline int claim_task(const sched_t *sc, int64_t loc, int64_t s)
{
    int64_t prev = s - 1;
    return __atomic_compare_exchange_n(&sc->claim[loc], &prev, s, 0, __ATOMIC_ACQ_REL,
                                       __ATOMIC_RELAXED);
}

static void worker(run_t *R, const sched_t *sc, int tid, double *prof)
{
    const int64_t B = R->tr->batch, per = R->per_step;
    const int64_t nsteps = (R->n + B - 1) / B, total = nsteps * per;
    const int32_t *mine = R->mine + R->mine_at[tid];
    const int64_t nmine = R->mine_at[tid + 1] - R->mine_at[tid];
    const int solo_team = R->nthreads > 1;
    /* profile: this thread's CPU time, read only when the phase changes or a
     * wait starts/ends (a few clock reads per step, not per task) */
    prof_t pf = {prof, {0}, 0.0, -1};
    pace_t pc = {-1, 0.0, 0.0};
    step_ctx c;
    c.s = -1;
    c.tid = tid;
    int64_t own_s = 0, own_k = 0;        /* this thread's next own task: step, index in mine */
    unsigned spins = 0;
    double idle_t0 = -1.0;
    int asked = 0;
    if (nmine == 0) own_s = nsteps;
    for (;;) {
        /* done first: a stop is stored before the done count of its task */
        const int64_t done = __atomic_load_n(sc->done, __ATOMIC_ACQUIRE);
        const int64_t stop = __atomic_load_n(sc->stop_step, __ATOMIC_ACQUIRE);
        const int64_t end = stop < nsteps ? (stop + 1) * per : total;
        if (done >= end) break;
        int solo = __atomic_load_n(sc->solo, __ATOMIC_ACQUIRE);
        if (solo >= 0 && solo != tid) {
            /* Sleep (not spin) until the solo thread starts the next chunk or
             * the run ends, so that this core goes to the other jobs. */
            struct timespec nap = {0, SOLO_NAP_NS};
            prof_switch(&pf, MAX_PHASES);
            for (;;) {
                int so = __atomic_load_n(sc->solo, __ATOMIC_ACQUIRE);
                if (so < 0 || so == tid ||
                    __atomic_load_n(sc->done, __ATOMIC_ACQUIRE) >= total ||
                    __atomic_load_n(sc->stop_step, __ATOMIC_ACQUIRE) != INT64_MAX)
                    break;
                nanosleep(&nap, NULL);
            }
            continue;
        }
        /* the frontier: the step and phase in progress (all earlier tasks done) */
        const int64_t fs = done / per;
        const int fp = phase_of(R, done - fs * per);
        /* this thread's next own task not taken by another */
        while (own_s < nsteps &&
               __atomic_load_n(&sc->claim[mine[own_k]], __ATOMIC_ACQUIRE) >= own_s) {
            if (++own_k == nmine) { own_k = 0; own_s++; }
        }
        int64_t s = -1, loc = -1;
        if (own_s < nsteps && own_s <= stop) {
            int64_t l = mine[own_k];
            int p = phase_of(R, l);
            if ((own_s < fs || (own_s == fs && p <= fp)) && claim_task(sc, l, own_s)) {
                s = own_s;
                loc = l;
            }
        }
        if (loc < 0 && fs < nsteps && fs <= stop) {
            /* steal an unclaimed task of the phase in progress */
            const phase_t *ph = &R->ph[fp];
            for (int64_t l = ph->first; l < ph->first + ph->ntasks; l++) {
                if (__atomic_load_n(&sc->claim[l], __ATOMIC_RELAXED) == fs - 1 &&
                    claim_task(sc, l, fs)) {
                    s = fs;
                    loc = l;
                    break;
                }
            }
        }
        if (loc < 0) {
            /* nothing ready: a task of another thread is running.  Long waits
             * (past the first SPINS_BEFORE_CLOCK spins) count towards the fallback. */
            prof_switch(&pf, MAX_PHASES);
            if (++spins < SPINS_BEFORE_CLOCK) {
                cpu_relax();
                continue;
            }
            spins = 0;
            double t = mono_s();
            if (idle_t0 < 0.0) {
                idle_t0 = t;
            } else if (!asked && solo_team) {
                double w = pc.waited + (t - idle_t0), lim = SOLO_FRAC * (t - pc.t0);
                if (w > SOLO_MIN_S && w > lim) {
                    asked = 1;
                    go_solo(sc, tid);
                }
            }
            /* no sched_yield(): on a busy machine it hands this core to another
             * job for a whole time slice, and then the partner waits for us */
            continue;
        }
        spins = 0;
        if (idle_t0 >= 0.0) {
            pc.waited += mono_s() - idle_t0;
            idle_t0 = -1.0;
        }
        const int64_t tk = s * per + loc, in_chunk = tk % sc->chunk_tk;
        if (in_chunk == 0 && tk > 0) new_chunk(sc, tid);
        if (tk / sc->chunk_tk != pc.chunk) {
            pc.chunk = tk / sc->chunk_tk;
            pc.t0 = mono_s();
            pc.waited = 0.0;
            asked = 0;
        }
        if (in_chunk == R->opt->solo_after) go_solo(sc, tid);
        const int p = phase_of(R, loc);
        prof_switch(&pf, p);
        if (fnn_tr_run_task(R, &c, s, &R->ph[p], loc - R->ph[p].first))
            __atomic_store_n(sc->stop_step, s, __ATOMIC_RELEASE);   /* before its done count */
        if (!R->sig) {
            __atomic_fetch_add(sc->done, 1, __ATOMIC_RELEASE);
        } else {
            /* the grad step's one step: the task that brings the count to the end of a
             * backward phase finished that layer's gradient (the later phases' tasks
             * wait for the count, so none of them ran); acquire: the other threads'
             * writes of that phase, counted before ours, are visible to the signal's
             * readers through its mutex */
            const int64_t nd = __atomic_add_fetch(sc->done, 1, __ATOMIC_ACQ_REL);
            const phase_t *ph = &R->ph[phase_of(R, nd - 1)];
            if (ph->kind == FNN_PHASE_BACKWARD && nd == ph->first + ph->ntasks)
                fnn_tr_signal_layer(R->sig, ph->layer);
        }
    }
    if (prof) {
        prof_switch(&pf, -2);
#ifdef FASTNN_HAVE_OPENMP
#pragma omp critical(fnn_trainer_prof)
#endif
        for (int p = 0; p <= MAX_PHASES; p++) prof[p] += pf.t[p];
    }
}


/* ------------------------------------------------------------------ run */

void fnn_tr_sched_run(run_t *R)
{
    fnn_trainer *tr = R->tr;
    const fnn_train_opt *opt = R->opt;
    const int nthreads = R->nthreads, L = tr->L;
    /* one cache line each: the completion count is hit by every task and
     * polled by waiters */
    struct { int64_t v; char pad[CACHE_LINE - sizeof(int64_t)]; }
        done __attribute__((aligned(CACHE_LINE))) = {.v = 0},
        stop_step __attribute__((aligned(CACHE_LINE))) = {.v = INT64_MAX};  /* no stop */
    int solo = -1, solo_chunks = 0, streak = tr->solo_streak, hold = tr->solo_hold;
    if (nthreads > 1 && hold > 0) {   /* the back-off holds the first chunk too */
        solo = 0;
        hold--;
        solo_chunks = 1;
    }
    int64_t chunk_steps = opt->chunk_steps;
    if (chunk_steps <= 0) {
        double step_flops = 0.0;
        for (int l = 0; l < L; l++)
            step_flops += 2.0 * tr->batch * tr->dims[l] * tr->dims[l + 1] * (l > 0 ? 3 : 2);
        chunk_steps = (int64_t)(CHUNK_FLOPS / step_flops) + 1;
    }
    sched_t sc = {R->claim, &done.v, &stop_step.v, &solo, &solo_chunks, &streak, &hold,
                  chunk_steps * R->per_step};
#ifdef FASTNN_HAVE_OPENMP
#pragma omp parallel num_threads(nthreads)
    worker(R, &sc, omp_get_thread_num(), opt->profile);
#else
    worker(R, &sc, 0, opt->profile);
#endif
    if (opt->solo_out) *opt->solo_out = solo_chunks;
    tr->solo_streak = solo >= 0 ? streak : 0;
    tr->solo_hold = solo >= 0 ? hold : 0;
}
