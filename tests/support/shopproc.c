/*
 * The shop as a child process and HTTP calls to it (see shopproc.h). One
 * copy of what the shop tests each carried: the fork and environment, the
 * wait for the "listening on" line, the stop by PID, and a libcurl call
 * that collects the body and the two headers the tests read.
 */
#ifdef SHOP_TEST_HAVE_CURL
#include "shopproc.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#ifndef DBKIT_SHOP_PATH
#error "DBKIT_SHOP_PATH (the built shop) is set by examples/CMakeLists.txt"
#endif

#define LISTENING "listening on http://127.0.0.1:"

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

void dbkt_shop_dump_log(const dbkt_shop *s)
{
    FILE *f = fopen(s->errlog, "r");
    if (!f)
        return;
    char line[1024];
    int n = 0;
    fprintf(stderr, "---- shop stderr (%s) ----\n", s->errlog);
    while (fgets(line, sizeof line, f) && n++ < 200)
        fputs(line, stderr);
    fclose(f);
}

const char *dbkt_shop_path(void)
{
    const char *bin = DBKIT_SHOP_PATH;
    if (access(bin, X_OK) != 0)
        fail_msg("shop binary not found at %s (build the shop target)", bin);
    return bin;
}

void dbkt_shop_start(dbkt_shop *s, const char *const *env)
{
    const char *bin = dbkt_shop_path();
    memset(s, 0, sizeof *s);
    char *dir = dbkt_tmpdir();
    snprintf(s->errlog, sizeof s->errlog, "%s/shop-stderr.log", dir);
    free(dir);
    int pfd[2];
    assert_int_equal(pipe(pfd), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* The shop dies with the test process whatever happens to it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() == 1)
            _exit(127);
        dup2(pfd[1], STDOUT_FILENO);
        close(pfd[0]);
        close(pfd[1]);
        int fd = open(s->errlog, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fd >= 0) {
            dup2(fd, STDERR_FILENO);
            close(fd);
        }
        unsetenv("REDIS_URL");
        unsetenv("DB_POOL_MAX");
        setenv("HOST", "127.0.0.1", 1);
        setenv("PORT", "0", 1);
        setenv("SHOP_PWHASH", "fast", 1);
        unsetenv("HTTP_THREADS"); /* the defaults: loop threads and workers */
        unsetenv("HTTP_WORKERS");
        for (size_t i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        execl(bin, bin, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    s->pid = pid;
    /* Read stdout until the "listening on" line, at most 20 s. */
    char buf[4096];
    size_t len = 0;
    int64_t deadline = dbkt_mono_ms() + 20000;
    while (s->port == 0) {
        int left = (int)(deadline - dbkt_mono_ms());
        if (left <= 0)
            break;
        struct pollfd p = {pfd[0], POLLIN, 0};
        if (poll(&p, 1, left) <= 0)
            continue;
        ssize_t n = read(pfd[0], buf + len, sizeof buf - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        buf[len] = '\0';
        const char *l = strstr(buf, LISTENING);
        if (l && strchr(l, '\n'))
            s->port = atoi(l + strlen(LISTENING));
    }
    close(pfd[0]);
    if (s->port <= 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        s->pid = 0;
        dbkt_shop_dump_log(s);
        fail_msg("the shop did not start within 20 s (stdout: %.*s)", (int)len, buf);
    }
    snprintf(s->base, sizeof s->base, "http://127.0.0.1:%d", s->port);
}

int dbkt_shop_stop(dbkt_shop *s, int timeout_ms)
{
    if (s->pid <= 0)
        return -1;
    pid_t pid = s->pid;
    s->pid = 0;
    kill(pid, SIGTERM);
    int64_t deadline = dbkt_mono_ms() + timeout_ms;
    int st = 0;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (r < 0) /* not our child any more */
            return -1;
        if (dbkt_mono_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        nap_ms(10);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

bool dbkt_shop_log_contains(const dbkt_shop *s, const char *needle)
{
    for (int tries = 0; tries < 50; tries++) {
        FILE *f = fopen(s->errlog, "r");
        if (f) {
            char line[4096];
            bool found = false;
            while (!found && fgets(line, sizeof line, f))
                found = strstr(line, needle) != NULL;
            fclose(f);
            if (found)
                return true;
        }
        nap_ms(20);
    }
    return false;
}

/* ---- HTTP ---- */

static size_t on_body(char *p, size_t sz, size_t n, void *ud)
{
    dbkt_http_res *r = ud;
    size_t add = sz * n;
    char *nb = realloc(r->body, r->len + add + 1);
    if (!nb)
        return 0;
    memcpy(nb + r->len, p, add);
    r->body = nb;
    r->len += add;
    r->body[r->len] = '\0';
    return add;
}

static size_t on_header(char *p, size_t sz, size_t n, void *ud)
{
    dbkt_http_res *r = ud;
    size_t len = sz * n;
    if (len > 13 && strncasecmp(p, "X-DB-Queries:", 13) == 0)
        r->queries = strtol(p + 13, NULL, 10);
    if (len > 11 && strncasecmp(p, "Set-Cookie:", 11) == 0) {
        size_t from = 11;
        while (from < len && p[from] == ' ')
            from++;
        size_t to = len;
        while (to > from && (p[to - 1] == '\r' || p[to - 1] == '\n'))
            to--;
        snprintf(r->set_cookie, sizeof r->set_cookie, "%.*s", (int)(to - from), p + from);
    }
    return len;
}

CURL *dbkt_http_handle(void)
{
    return curl_easy_init();
}

void dbkt_http_handle_free(CURL *c)
{
    if (c)
        curl_easy_cleanup(c);
}

bool dbkt_http_call(CURL *keep, const char *base, const char *method, const char *path,
                    const char *body, long body_len, const char *cookie, long timeout_ms,
                    dbkt_http_res *r)
{
    memset(r, 0, sizeof *r);
    r->queries = -1;
    CURL *c = keep ? keep : curl_easy_init();
    if (!c) {
        snprintf(r->error, sizeof r->error, "curl_easy_init failed");
        return false;
    }
    char url[4096];
    snprintf(url, sizeof url, "%s%s", base, path);
    curl_easy_setopt(c, CURLOPT_URL, url); /* curl keeps its own copy */
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    h = curl_slist_append(h, "Expect:");
    char ch[512];
    if (cookie) {
        snprintf(ch, sizeof ch, "Cookie: %s", cookie);
        h = curl_slist_append(h, ch);
    }
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, body_len >= 0 ? body_len : (long)strlen(body));
    } else {
        curl_easy_setopt(c, CURLOPT_HTTPGET, 1L); /* a kept handle forgets an earlier body */
    }
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    CURLcode cc = curl_easy_perform(c);
    if (cc == CURLE_OK)
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    else
        snprintf(r->error, sizeof r->error, "%s", curl_easy_strerror(cc));
    /* The handle may outlive this call's headers and buffers. */
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, NULL);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, NULL);
    curl_slist_free_all(h);
    if (!keep)
        curl_easy_cleanup(c);
    if (r->body && r->len > 0 && r->body[0] == '{')
        r->json = json_loadb(r->body, r->len, 0, NULL);
    return cc == CURLE_OK;
}

void dbkt_http_res_free(dbkt_http_res *r)
{
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

double dbkt_metrics_value(const char *text, const char *name)
{
    size_t nl = strlen(name);
    for (const char *line = text; line && *line;) {
        const char *end = strchr(line, '\n');
        if (strncmp(line, name, nl) == 0 && line[nl] == ' ')
            return strtod(line + nl + 1, NULL);
        line = end ? end + 1 : NULL;
    }
    return -1;
}

#else
/* Without libcurl or the shop the shop tests are stubs; nothing to build. */
typedef int dbkt_shopproc_unused;
#endif
