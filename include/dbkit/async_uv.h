/*
 * dbkit/async_uv.h - a dbk_async on a libuv loop (header-only).
 *
 * Header-only on purpose: libdbkit does not link libuv; a program that uses
 * libuv includes this after <uv.h> and links libuv itself. One uv_poll_t
 * watches dbk_async_fd() for UV_READABLE and calls dbk_async_process(), so
 * every completion callback runs on the loop thread, inside the loop:
 *
 *     #include <uv.h>
 *     #include <dbkit/async_uv.h>
 *
 *     dbk_async_uv w;
 *     dbk_async_uv_start(&w, loop, a);     after dbk_async_open()
 *     ... uv_run(loop, UV_RUN_DEFAULT) ...
 *     dbk_async_uv_stop(&w);               before dbk_async_close(a)
 *     dbk_async_close(a);                  delivers the last callbacks
 *     uv_run(loop, UV_RUN_DEFAULT);        lets libuv finish the handle's close
 *
 * The poll handle must be stopped before dbk_async_close(), which closes
 * the descriptor it watches. dbk_async_uv_stop() stops and closes the
 * handle (its memory, inside `w`, must stay valid until the loop has run
 * once more). Callbacks keep the threading rules of async.h: they run on
 * the loop thread and may submit; they must not stop the watcher or close
 * the handle themselves (defer that, e.g. with a uv_idle_t or after
 * uv_stop()).
 *
 * `batch` bounds the callbacks run per wake-up (0: all ready), so that a
 * flood of completions does not starve the loop's other handles; with work
 * left the descriptor stays readable and the loop comes back.
 */
#ifndef DBKIT_ASYNC_UV_H
#define DBKIT_ASYNC_UV_H

#include <uv.h>

#include "async.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct dbk_async_uv {
    uv_poll_t poll; /* data points at this struct */
    dbk_async *async;
    size_t batch; /* callbacks per wake-up (0: every ready one) */
} dbk_async_uv;

static inline void dbk_async_uv__ready(uv_poll_t *h, int status, int events)
{
    dbk_async_uv *w = (dbk_async_uv *)h->data;
    (void)events;
    /* status < 0 (an error on the descriptor) cannot happen to an eventfd
     * or a pipe the handle owns; processing anyway is harmless. */
    (void)status;
    dbk_async_process(w->async, w->batch);
}

/* Starts watching `a` on `loop` (the loop thread must be the one that
 * processes: see async.h). Returns 0 or a libuv error code (uv_strerror). */
static inline int dbk_async_uv_start(dbk_async_uv *w, uv_loop_t *loop, dbk_async *a)
{
    int r;
    w->async = a;
    r = uv_poll_init(loop, &w->poll, dbk_async_fd(a));
    if (r != 0)
        return r;
    w->poll.data = w;
    r = uv_poll_start(&w->poll, UV_READABLE, dbk_async_uv__ready);
    if (r != 0)
        uv_close((uv_handle_t *)&w->poll, NULL);
    return r;
}

/* Stops watching and closes the poll handle (closing completes on the
 * loop's next turn). Call before dbk_async_close(). */
static inline void dbk_async_uv_stop(dbk_async_uv *w)
{
    if (!uv_is_closing((uv_handle_t *)&w->poll)) {
        uv_poll_stop(&w->poll);
        uv_close((uv_handle_t *)&w->poll, NULL);
    }
}

#ifdef __cplusplus
}
#endif
#endif /* DBKIT_ASYNC_UV_H */
