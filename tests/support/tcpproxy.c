/*
 * The misbehaving TCP proxy of the deadline tests (see tcpproxy.h).
 *
 * One thread runs a poll() loop over the listening socket, a wake-up pipe
 * and both sockets of every proxied connection. Each direction of a
 * connection has one fixed buffer: a chunk is read only when the buffer is
 * empty and written out (after the delay) before the next one is read, so
 * memory is bounded (PX_MAX_PAIRS x 2 x PX_BUF) and order is kept. A
 * direction that does not flow in the current mode is still read, and what
 * is read is thrown away: the peer's sends never block and it never gets
 * an answer, which is what a black-holed network looks like from an
 * established connection. Controls take the mutex and wake the loop
 * through the pipe; reset_all waits (bounded) until the loop has done it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "tcpproxy.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#define PX_MAX_PAIRS 64
#define PX_BUF 65536

struct px_dir {
    char buf[PX_BUF];
    size_t len, off;    /* bytes buffered, bytes already written */
    int64_t release_ms; /* not before this (the delay) */
};

struct px_pair {
    int cfd, sfd; /* client side, server side (-1: none) */
    struct px_dir c2s, s2c;
};

struct dbkt_proxy {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int lfd;
    int wake[2];
    int port;
    struct sockaddr_in target;
    /* under mu */
    dbkt_proxy_mode mode;
    int delay_ms;
    int trickle; /* bytes passed on per delay_ms (0: whole chunks) */
    bool stop;
    unsigned reset_req, reset_done;
    size_t open;
    /* the loop's own */
    struct px_pair *pairs[PX_MAX_PAIRS];
};

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL, 0);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void close_rst(int fd)
{
    if (fd < 0)
        return;
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

static void pair_close(dbkt_proxy *p, size_t i, bool rst)
{
    struct px_pair *pr = p->pairs[i];
    if (rst) {
        close_rst(pr->cfd);
        close_rst(pr->sfd);
    } else {
        if (pr->cfd >= 0)
            close(pr->cfd);
        if (pr->sfd >= 0)
            close(pr->sfd);
    }
    free(pr);
    p->pairs[i] = NULL;
    pthread_mutex_lock(&p->mu);
    p->open--;
    pthread_mutex_unlock(&p->mu);
}

static int connect_target(const dbkt_proxy *p)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    /* Loopback: the connect completes (or is refused) at once. */
    if (connect(fd, (const struct sockaddr *)&p->target, sizeof p->target) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    set_nonblock(fd);
    return fd;
}

static void on_accept(dbkt_proxy *p, dbkt_proxy_mode mode)
{
    int cfd = accept4(p->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (cfd < 0)
        return;
    size_t slot = PX_MAX_PAIRS;
    for (size_t i = 0; i < PX_MAX_PAIRS; i++)
        if (!p->pairs[i]) {
            slot = i;
            break;
        }
    struct px_pair *pr = slot < PX_MAX_PAIRS ? calloc(1, sizeof *pr) : NULL;
    if (!pr) {
        close_rst(cfd);
        return;
    }
    int one = 1;
    setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    pr->cfd = cfd;
    pr->sfd = mode == DBKT_PROXY_FORWARD ? connect_target(p) : -1;
    if (mode == DBKT_PROXY_FORWARD && pr->sfd < 0) {
        close_rst(cfd);
        free(pr);
        return;
    }
    p->pairs[slot] = pr;
    pthread_mutex_lock(&p->mu);
    p->open++;
    pthread_mutex_unlock(&p->mu);
}

/* Reads from fd into d when the direction flows, else into a throwaway
 * buffer. Returns false when fd reached EOF or failed. */
static bool pump_in(int fd, struct px_dir *d, bool flows, int delay_ms)
{
    if (!flows) {
        char sink[4096];
        d->len = d->off = 0;
        for (int k = 0; k < 64; k++) {
            ssize_t n = read(fd, sink, sizeof sink);
            if (n > 0)
                continue;
            if (n == 0)
                return false;
            return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
        }
        return true;
    }
    if (d->len)
        return true;
    ssize_t n = read(fd, d->buf, sizeof d->buf);
    if (n > 0) {
        d->len = (size_t)n;
        d->off = 0;
        d->release_ms = dbkt_mono_ms() + delay_ms;
        return true;
    }
    if (n == 0)
        return false;
    return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
}

/* Writes what d holds to fd once its delay is over (trickle > 0: at most
 * that many bytes, then waits delay_ms again). False on a failure. */
static bool pump_out(int fd, struct px_dir *d, int trickle, int delay_ms)
{
    if (!d->len || d->release_ms > dbkt_mono_ms())
        return true;
    size_t want = d->len - d->off;
    if (trickle > 0 && want > (size_t)trickle)
        want = (size_t)trickle;
    ssize_t n = send(fd, d->buf + d->off, want, MSG_NOSIGNAL);
    if (n < 0)
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    d->off += (size_t)n;
    if (d->off == d->len)
        d->len = d->off = 0;
    else if (trickle > 0)
        d->release_ms = dbkt_mono_ms() + delay_ms;
    return true;
}

static void *proxy_main(void *arg)
{
    dbkt_proxy *p = arg;
    struct pollfd fds[2 + 2 * PX_MAX_PAIRS];
    int owner[2 + 2 * PX_MAX_PAIRS]; /* pair index of each pollfd, -1: none */
    for (;;) {
        pthread_mutex_lock(&p->mu);
        bool stop = p->stop;
        dbkt_proxy_mode mode = p->mode;
        int delay = p->delay_ms;
        int trickle = p->trickle;
        unsigned reset_req = p->reset_req;
        pthread_mutex_unlock(&p->mu);
        if (stop)
            break;
        if (reset_req != p->reset_done) {
            for (size_t i = 0; i < PX_MAX_PAIRS; i++)
                if (p->pairs[i])
                    pair_close(p, i, true);
            pthread_mutex_lock(&p->mu);
            p->reset_done = reset_req;
            pthread_cond_broadcast(&p->cv);
            pthread_mutex_unlock(&p->mu);
        }
        bool c2s_flows = mode != DBKT_PROXY_SILENT;
        bool s2c_flows = mode == DBKT_PROXY_FORWARD;

        nfds_t nf = 0;
        fds[nf] = (struct pollfd){.fd = p->wake[0], .events = POLLIN};
        owner[nf++] = -1;
        fds[nf] = (struct pollfd){.fd = p->lfd, .events = POLLIN};
        owner[nf++] = -1;
        int64_t now = dbkt_mono_ms();
        int64_t next = now + 1000;
        for (size_t i = 0; i < PX_MAX_PAIRS; i++) {
            struct px_pair *pr = p->pairs[i];
            if (!pr)
                continue;
            if (pr->sfd < 0 && mode == DBKT_PROXY_FORWARD) {
                /* Accepted while the network was down: never connected. */
                pair_close(p, i, false);
                continue;
            }
            short ce = 0, se = 0;
            if (!c2s_flows || !pr->c2s.len)
                ce |= POLLIN;
            if (pr->sfd >= 0 && (!s2c_flows || !pr->s2c.len))
                se |= POLLIN;
            if (pr->s2c.len) {
                if (pr->s2c.release_ms <= now)
                    ce |= POLLOUT;
                else if (pr->s2c.release_ms < next)
                    next = pr->s2c.release_ms;
            }
            if (pr->c2s.len && pr->sfd >= 0) {
                if (pr->c2s.release_ms <= now)
                    se |= POLLOUT;
                else if (pr->c2s.release_ms < next)
                    next = pr->c2s.release_ms;
            }
            fds[nf] = (struct pollfd){.fd = pr->cfd, .events = ce};
            owner[nf++] = (int)i;
            if (pr->sfd >= 0) {
                fds[nf] = (struct pollfd){.fd = pr->sfd, .events = se};
                owner[nf++] = (int)i;
            }
        }
        int timeout = (int)(next - now);
        if (timeout < 0)
            timeout = 0;
        int n = poll(fds, nf, timeout);
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0)
            continue;
        if (fds[0].revents) {
            char drain[64];
            while (read(p->wake[0], drain, sizeof drain) > 0) {
            }
        }
        if (fds[1].revents & POLLIN)
            on_accept(p, mode);
        for (nfds_t k = 2; k < nf; k++) {
            int i = owner[k];
            struct px_pair *pr = p->pairs[i];
            if (!pr || !fds[k].revents)
                continue;
            bool is_client = fds[k].fd == pr->cfd;
            bool ok = true;
            if (is_client) {
                if (fds[k].revents & (POLLIN | POLLHUP | POLLERR))
                    ok = pump_in(pr->cfd, &pr->c2s, c2s_flows && pr->sfd >= 0, delay);
                if (ok && (fds[k].revents & POLLOUT))
                    ok = pump_out(pr->cfd, &pr->s2c, trickle, delay);
                if (!ok)
                    pair_close(p, (size_t)i, false);
            } else {
                if (fds[k].revents & (POLLIN | POLLHUP | POLLERR))
                    ok = pump_in(pr->sfd, &pr->s2c, s2c_flows, delay);
                if (ok && (fds[k].revents & POLLOUT))
                    ok = pump_out(pr->sfd, &pr->c2s, 0, delay);
                if (!ok) {
                    if (s2c_flows) {
                        pair_close(p, (size_t)i, false);
                    } else {
                        /* The server went away but the network is down:
                         * the client must not hear of it. */
                        close(pr->sfd);
                        pr->sfd = -1;
                        pr->c2s.len = pr->c2s.off = 0;
                    }
                }
            }
        }
    }
    for (size_t i = 0; i < PX_MAX_PAIRS; i++)
        if (p->pairs[i])
            pair_close(p, i, false);
    return NULL;
}

static void wake(dbkt_proxy *p)
{
    char b = 1;
    ssize_t n = write(p->wake[1], &b, 1);
    (void)n; /* a full pipe already wakes the loop */
}

dbkt_proxy *dbkt_proxy_start(const char *target_host, int target_port)
{
    dbkt_proxy *p = calloc(1, sizeof *p);
    if (!p)
        fail_msg("tcpproxy: out of memory");
    p->target.sin_family = AF_INET;
    p->target.sin_port = htons((uint16_t)target_port);
    if (inet_pton(AF_INET, target_host, &p->target.sin_addr) != 1)
        fail_msg("tcpproxy: target host %s is not a numeric IPv4 address", target_host);
    p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (p->lfd < 0)
        fail_msg("tcpproxy: socket: %s", strerror(errno));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t al = sizeof a;
    if (bind(p->lfd, (struct sockaddr *)&a, sizeof a) != 0 || listen(p->lfd, 64) != 0 ||
        getsockname(p->lfd, (struct sockaddr *)&a, &al) != 0)
        fail_msg("tcpproxy: listen on 127.0.0.1: %s", strerror(errno));
    p->port = ntohs(a.sin_port);
    if (pipe2(p->wake, O_CLOEXEC | O_NONBLOCK) != 0)
        fail_msg("tcpproxy: pipe: %s", strerror(errno));
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (pthread_create(&p->thread, NULL, proxy_main, p) != 0)
        fail_msg("tcpproxy: could not start its thread");
    return p;
}

int dbkt_proxy_port(const dbkt_proxy *p)
{
    return p->port;
}

void dbkt_proxy_set_mode(dbkt_proxy *p, dbkt_proxy_mode mode)
{
    pthread_mutex_lock(&p->mu);
    p->mode = mode;
    pthread_mutex_unlock(&p->mu);
    wake(p);
}

void dbkt_proxy_set_delay(dbkt_proxy *p, int delay_ms)
{
    pthread_mutex_lock(&p->mu);
    p->delay_ms = delay_ms < 0 ? 0 : delay_ms;
    pthread_mutex_unlock(&p->mu);
    wake(p);
}

void dbkt_proxy_set_trickle(dbkt_proxy *p, int bytes)
{
    pthread_mutex_lock(&p->mu);
    p->trickle = bytes < 0 ? 0 : bytes;
    pthread_mutex_unlock(&p->mu);
    wake(p);
}

void dbkt_proxy_reset_all(dbkt_proxy *p)
{
    pthread_mutex_lock(&p->mu);
    unsigned want = ++p->reset_req;
    pthread_mutex_unlock(&p->mu);
    wake(p);
    int64_t until = dbkt_mono_ms() + 10000;
    pthread_mutex_lock(&p->mu);
    while (p->reset_done != want && dbkt_mono_ms() < until) {
        pthread_mutex_unlock(&p->mu);
        usleep(1000);
        pthread_mutex_lock(&p->mu);
    }
    bool done = p->reset_done == want;
    pthread_mutex_unlock(&p->mu);
    if (!done)
        fail_msg("tcpproxy: the reset was not done within 10 s");
}

size_t dbkt_proxy_connections(dbkt_proxy *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->open;
    pthread_mutex_unlock(&p->mu);
    return n;
}

void dbkt_proxy_stop(dbkt_proxy *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = true;
    pthread_mutex_unlock(&p->mu);
    wake(p);
    pthread_join(p->thread, NULL);
    close(p->lfd);
    close(p->wake[0]);
    close(p->wake[1]);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

static int count_dir(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

int dbkt_count_threads(void)
{
    return count_dir("/proc/self/task");
}

int dbkt_count_fds(void)
{
    int n = count_dir("/proc/self/fd");
    return n < 0 ? n : n - 1; /* the directory's own descriptor */
}
