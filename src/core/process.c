/*
 * Which process owns a handle: fork detection shared by every layer.
 *
 * A connection (its socket, its SQLite handle, its TLS state) belongs to the
 * process that opened it. After fork() both processes hold the same socket;
 * if both use it, each reads the other's answers and reports wrong rows as
 * success. So every handle records the fork generation it was opened in and
 * compares it with the current one before it touches anything.
 *
 * The generation is a process-wide counter bumped by a pthread_atfork child
 * handler, installed once, before the first handle records it. Reading it is
 * one relaxed atomic load: cheaper than getpid(), which is a system call on
 * current glibc.
 */
#include <pthread.h>
#include <unistd.h>

#include "internal.h"

static unsigned g_fork_gen;
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;

static void on_fork_child(void)
{
    __atomic_add_fetch(&g_fork_gen, 1, __ATOMIC_RELAXED);
}

static void install_atfork(void)
{
    pthread_atfork(NULL, NULL, on_fork_child);
}

void dbk__owner_init(dbk__owner *o)
{
    pthread_once(&g_atfork_once, install_atfork);
    o->gen = __atomic_load_n(&g_fork_gen, __ATOMIC_RELAXED);
    o->pid = (long)getpid();
}

bool dbk__owner_forked(const dbk__owner *o)
{
    return __atomic_load_n(&g_fork_gen, __ATOMIC_RELAXED) != o->gen;
}

dbk_rc dbk__owner_error(const dbk__owner *o, const char *what, dbk_error *err)
{
    dbk__err(err, DBK_EMISUSE, "%s used after fork(): opened in process %ld, used in process %ld",
             what, o->pid, (long)getpid());
    dbk__err_hint(err, "open connections and pools in the child after fork(); a connection "
                       "is never shared across fork(), and the parent's stays usable");
    return DBK_EMISUSE;
}
