/*
 * accesslog.c - the access log: one line per answered request, buffered
 * per HTTP thread and written by a background flusher.
 *
 * Why shaped so: an access log is always on in production, so it must cost
 * a few per cent of throughput at most. Writing each line with its own
 * write(2) cost about 40 % of GET /users/{id} with the Redis cache (12.2k
 * against 21.6k req/s). Here a request formats its line on its own stack
 * and copies it into its thread's buffer under that buffer's own mutex,
 * which only the background flusher ever takes besides the owner (a few
 * times a second): no syscall and no lock shared between request threads
 * on the hot path.
 *
 * Each thread owns two buffers: the one being filled and a spare. A flush
 * (the flusher every flush_ms, shop_access_log_close() at shutdown) takes
 * the output mutex, swaps the two under the buffer's mutex, and writes the
 * full one outside it, so a slow stderr never holds up appends to the fresh
 * buffer. Because every swap and write happens under the one output mutex,
 * a thread's lines reach the file in the order it appended them, and two
 * flushes never interleave. A libmicrohttpd connection stays on one thread,
 * so the lines of one connection are in order too.
 *
 * A request whose buffer is full does not write either: it doubles the
 * buffer (AL_BUF at first, at most AL_BUF_MAX) and wakes the flusher. Only
 * a thread at AL_BUF_MAX (stderr has been blocked for a while: a full pipe
 * whose reader is stalled) flushes itself and so waits for stderr, which
 * is the back-pressure any log has to apply or lose lines.
 *
 * Writes end at line boundaries and carry at most PIPE_BUF bytes, so on a
 * pipe (journald, a container runtime) each write is atomic: another stderr
 * writer (dbkit's log hook, the shop's own messages) can land between two
 * access lines but never inside one. A line is never longer than AL_LINE
 * bytes (the path is escaped and cut, marked with "..."), so it always fits.
 *
 * Limits, stated in docs/example-service.md: a line waits at most about
 * flush_ms before it is written (longer only while stderr blocks); a crash
 * (SIGKILL, SIGSEGV, abort, the OOM killer) loses the lines still buffered:
 * about flush_ms worth, at most 2 x AL_BUF_MAX bytes per HTTP thread. The
 * lines already written are complete (every write ends with a newline),
 * except that a SIGKILL in the middle of a write to a regular file can
 * leave a partial last line. A write
 * that fails (EPIPE, ENOSPC, ...) drops its lines and counts them in
 * shop_access_log_dropped_total.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shop.h"

/* Bytes per buffer (two per HTTP thread) at first and at most; a line is
 * at most AL_LINE. */
#define AL_BUF (32 * 1024)
#define AL_BUF_MAX (1024 * 1024)
#define AL_LINE 768
/* Longest write: PIPE_BUF makes a write to a pipe atomic. */
#define AL_CHUNK (PIPE_BUF < AL_BUF ? PIPE_BUF : AL_BUF)

typedef struct al_buf {
    pthread_mutex_t mu; /* the owner thread's appends vs a flush's swap */
    char *cur;          /* being filled, guarded by mu */
    size_t cap, len;    /* guarded by mu */
    uint64_t lines;     /* appended so far, guarded by mu */
    char *spare;        /* being written, guarded by out_mu */
    size_t spare_cap;
    bool owned;         /* a live thread appends to it, guarded by reg_mu */
    struct al_buf *next;
} al_buf;

static int out_fd = STDERR_FILENO;
static int flush_ms = 100;
static bool opened;

/* Every buffer, freed at close. A thread takes one on its first line and
 * gives it back when it exits (buf_key's destructor); a new thread takes a
 * buffer given back before it allocates one, so with a thread per HTTP
 * connection there are as many buffers as the most threads that ever
 * logged at once, not one per connection ever served. Lines still in a
 * given-back buffer are written by the flusher as usual. */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static al_buf *bufs;
static pthread_key_t buf_key;
static pthread_once_t buf_key_once = PTHREAD_ONCE_INIT;
/* One flush at a time: the order of swaps is the order of writes. */
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static _Thread_local al_buf *tl_buf;

static pthread_t flusher;
static bool flusher_running;
static pthread_mutex_t stop_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t stop_cv;
static bool stop_flag, kicked; /* guarded by stop_mu */

/* Lines written without a buffer, write calls, lines lost to write errors
 * (the buffered lines are counted per buffer: no shared counter is touched
 * by every request). */
static atomic_uint_fast64_t unbuffered_lines, writes_total, dropped_total;
/* Times a request thread found its buffer at AL_BUF_MAX and wrote it itself. */
static atomic_uint_fast64_t waits_total;

static size_t count_lines(const char *p, size_t len)
{
    size_t n = 0;
    for (const char *e = p + len; (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++)
        n++;
    return n;
}

/* Writes p[0..len) (whole lines) in writes of at most AL_CHUNK bytes, each
 * ending at a newline. On an error the rest is dropped and counted. Called
 * under out_mu only. */
static void write_lines(const char *p, size_t len)
{
    while (len > 0) {
        size_t n = len;
        if (n > AL_CHUNK) {
            const char *nl = p + AL_CHUNK;
            while (nl > p && nl[-1] != '\n')
                nl--;
            n = nl > p ? (size_t)(nl - p) : AL_CHUNK; /* no newline: cannot happen */
        }
        ssize_t w = write(out_fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            /* A non-blocking stderr that is full: wait for it, bounded. */
            struct pollfd pf = {out_fd, POLLOUT, 0};
            if (poll(&pf, 1, 1000) > 0)
                continue;
        }
        if (w <= 0) {
            atomic_fetch_add(&dropped_total, count_lines(p, len));
            return;
        }
        atomic_fetch_add(&writes_total, 1);
        p += w;
        len -= (size_t)w;
    }
}

/* Writes out what b holds. Takes out_mu, then b->mu for the swap only. */
static void flush_buf(al_buf *b)
{
    pthread_mutex_lock(&out_mu);
    pthread_mutex_lock(&b->mu);
    char *full = b->cur;
    size_t len = b->len, cap = b->cap;
    if (len > 0) {
        b->cur = b->spare;
        b->cap = b->spare_cap;
        b->len = 0;
        b->spare = full;
        b->spare_cap = cap;
    }
    pthread_mutex_unlock(&b->mu);
    if (len > 0)
        write_lines(full, len);
    pthread_mutex_unlock(&out_mu);
}

static void flush_all(void)
{
    pthread_mutex_lock(&reg_mu);
    for (al_buf *b = bufs; b; b = b->next)
        flush_buf(b);
    pthread_mutex_unlock(&reg_mu);
}

/* At a logging thread's exit: its buffer may be taken by another thread
 * (unless close freed it already). */
static void give_back(void *p)
{
    pthread_mutex_lock(&reg_mu);
    for (al_buf *b = bufs; b; b = b->next)
        if (b == p)
            b->owned = false;
    pthread_mutex_unlock(&reg_mu);
}

static void make_buf_key(void)
{
    (void)pthread_key_create(&buf_key, give_back);
}

/* This thread's buffer, taken or created on its first line; NULL when out
 * of memory. */
static al_buf *thread_buf(void)
{
    if (tl_buf)
        return tl_buf;
    pthread_once(&buf_key_once, make_buf_key);
    pthread_mutex_lock(&reg_mu);
    for (al_buf *b = bufs; b; b = b->next) {
        if (!b->owned) {
            b->owned = true;
            pthread_mutex_unlock(&reg_mu);
            (void)pthread_setspecific(buf_key, b);
            tl_buf = b;
            return b;
        }
    }
    pthread_mutex_unlock(&reg_mu);
    al_buf *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->cur = malloc(AL_BUF);
    b->spare = malloc(AL_BUF);
    b->cap = b->spare_cap = AL_BUF;
    if (!b->cur || !b->spare || pthread_mutex_init(&b->mu, NULL) != 0) {
        free(b->cur);
        free(b->spare);
        free(b);
        return NULL;
    }
    b->owned = true;
    pthread_mutex_lock(&reg_mu);
    b->next = bufs;
    bufs = b;
    pthread_mutex_unlock(&reg_mu);
    (void)pthread_setspecific(buf_key, b);
    tl_buf = b;
    return b;
}

static void *flusher_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&stop_mu);
    while (!stop_flag) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += flush_ms / 1000;
        ts.tv_nsec += (long)(flush_ms % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        while (!stop_flag && !kicked && pthread_cond_timedwait(&stop_cv, &stop_mu, &ts) == 0)
            ;
        kicked = false;
        pthread_mutex_unlock(&stop_mu);
        flush_all();
        pthread_mutex_lock(&stop_mu);
    }
    pthread_mutex_unlock(&stop_mu);
    return NULL;
}

int shop_access_log_open(int fd, int every_ms)
{
    out_fd = fd;
    flush_ms = every_ms > 0 ? every_ms : 100;
    pthread_condattr_t ca;
    if (pthread_condattr_init(&ca) != 0)
        return -1;
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&stop_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc != 0)
        return -1;
    stop_flag = false;
    kicked = false;
    if (pthread_create(&flusher, NULL, flusher_main, NULL) != 0) {
        pthread_cond_destroy(&stop_cv);
        return -1;
    }
    flusher_running = true;
    opened = true;
    return 0;
}

void shop_access_log_close(void)
{
    if (!opened)
        return;
    pthread_mutex_lock(&stop_mu);
    stop_flag = true;
    pthread_cond_signal(&stop_cv);
    pthread_mutex_unlock(&stop_mu);
    if (flusher_running)
        pthread_join(flusher, NULL);
    flusher_running = false;
    pthread_cond_destroy(&stop_cv);
    /* The HTTP threads have stopped: whatever is buffered is final. */
    flush_all();
    pthread_mutex_lock(&reg_mu);
    for (al_buf *b = bufs, *next; b; b = next) {
        next = b->next;
        pthread_mutex_destroy(&b->mu);
        free(b->cur);
        free(b->spare);
        free(b);
    }
    bufs = NULL;
    pthread_mutex_unlock(&reg_mu);
    tl_buf = NULL;
    opened = false;
}

void shop_access_log_stats(uint64_t *lines, uint64_t *writes, uint64_t *dropped,
                           uint64_t *waits, uint64_t *buffers)
{
    *waits = atomic_load(&waits_total);
    uint64_t n = atomic_load(&unbuffered_lines), nb = 0;
    pthread_mutex_lock(&reg_mu);
    for (al_buf *b = bufs; b; b = b->next) {
        pthread_mutex_lock(&b->mu);
        n += b->lines;
        pthread_mutex_unlock(&b->mu);
        nb++;
    }
    *buffers = nb;
    pthread_mutex_unlock(&reg_mu);
    *lines = n;
    *writes = atomic_load(&writes_total);
    *dropped = atomic_load(&dropped_total);
}

/* ---- formatting ---- */

/* Appends s as a quoted-string body: printable ASCII as is, everything else
 * (control bytes, '"', '\\', bytes >= 0x7F) as \xHH; stops before `max`
 * bytes of output and marks a cut with "...". Returns the new offset. */
static size_t put_escaped(char *out, size_t o, size_t max, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (o + 4 + 3 > max) { /* room for one escape and the cut mark */
            memcpy(out + o, "...", 3);
            return o + 3;
        }
        if (*p < 0x20 || *p >= 0x7F || *p == '"' || *p == '\\') {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        } else {
            out[o++] = (char)*p;
        }
    }
    return o;
}

/* Per-thread cache of the formatted current second, "2026-12-04T11:35:12". */
static _Thread_local time_t tl_sec = -1;
static _Thread_local char tl_stamp[24];

static size_t put_u64(char *out, size_t o, uint64_t v, int min_digits)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v > 0 || n < min_digits);
    while (n > 0)
        out[o++] = tmp[--n];
    return o;
}

void shop_access_log(const char *method, const char *path, int status, int64_t dur_ns,
                     uint64_t queries)
{
    char line[AL_LINE];
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    if (now.tv_sec != tl_sec) {
        struct tm tm;
        gmtime_r(&now.tv_sec, &tm);
        strftime(tl_stamp, sizeof tl_stamp, "%Y-%m-%dT%H:%M:%S", &tm);
        tl_sec = now.tv_sec;
    }
    /* access ts=<UTC>.<ms>Z method=<m> path="<p>" status=<s> duration_ms=<d> queries=<q> */
    size_t o = 0;
    memcpy(line, "access ts=", 10);
    o = 10;
    size_t sl = strlen(tl_stamp);
    memcpy(line + o, tl_stamp, sl);
    o += sl;
    line[o++] = '.';
    o = put_u64(line, o, (uint64_t)(now.tv_nsec / 1000000), 3);
    memcpy(line + o, "Z method=", 9);
    o += 9;
    /* A method is a token; anything else in it is escaped, at most 32 bytes. */
    o = put_escaped(line, o, o + 32, method);
    memcpy(line + o, " path=\"", 7);
    o += 7;
    /* Room left for the closing quote and the numbers (< 100 bytes). */
    o = put_escaped(line, o, sizeof line - 100, path);
    memcpy(line + o, "\" status=", 9);
    o += 9;
    o = put_u64(line, o, (uint64_t)(status > 0 ? status : 0), 1);
    memcpy(line + o, " duration_ms=", 13);
    o += 13;
    uint64_t us = dur_ns > 0 ? (uint64_t)dur_ns / 1000 : 0;
    o = put_u64(line, o, us / 1000, 1);
    line[o++] = '.';
    o = put_u64(line, o, us % 1000, 3);
    memcpy(line + o, " queries=", 9);
    o += 9;
    o = put_u64(line, o, queries, 1);
    line[o++] = '\n';

    al_buf *b = opened ? thread_buf() : NULL;
    if (!b) { /* not open (or out of memory): one write, as before */
        atomic_fetch_add(&unbuffered_lines, 1);
        pthread_mutex_lock(&out_mu);
        write_lines(line, o);
        pthread_mutex_unlock(&out_mu);
        return;
    }
    pthread_mutex_lock(&b->mu);
    bool kick = false;
    while (b->len + o > b->cap) {
        char *grown = b->cap < AL_BUF_MAX ? realloc(b->cur, b->cap * 2) : NULL;
        if (grown) { /* the flusher writes it soon; this request goes on */
            b->cur = grown;
            b->cap *= 2;
            kick = true;
            continue;
        }
        /* At the cap (stderr is blocked) or out of memory: write it out
         * here. Only this thread appends, so then it is empty. */
        atomic_fetch_add(&waits_total, 1);
        pthread_mutex_unlock(&b->mu);
        flush_buf(b);
        pthread_mutex_lock(&b->mu);
    }
    memcpy(b->cur + b->len, line, o);
    b->len += o;
    b->lines++;
    pthread_mutex_unlock(&b->mu);
    if (kick) {
        pthread_mutex_lock(&stop_mu);
        kicked = true;
        pthread_cond_signal(&stop_cv);
        pthread_mutex_unlock(&stop_mu);
    }
}
