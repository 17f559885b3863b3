/* The layering check (scripts/check-layers.sh) itself: it passes on this
 * tree, and a file that includes or calls into a layer below its own, or an
 * app that includes an internal header, fails it. Each case builds a small
 * tree in a temporary directory with this tree's docs/architecture.md as
 * its layer table. No server. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

/* The source tree: this file is <root>/tests/unit/layers_test.c. */
static void source_root(char *out, size_t n)
{
    snprintf(out, n, "%s", __FILE__);
    char *p = strstr(out, "/tests/unit/layers_test.c");
    assert_non_null(p);
    *p = '\0';
}

static void put(const char *root, const char *rel, const char *text)
{
    char path[PATH_MAX], cmd[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    assert_int_equal(system(cmd), 0);
    *slash = '/';
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

/* A tree with the real layer table and a pool header to include. */
static void make_tree(char *dir, size_t n)
{
    char src[PATH_MAX], cmd[3 * PATH_MAX];
    source_root(src, sizeof src);
    snprintf(dir, n, "/tmp/dbkt-layers-XXXXXX");
    assert_non_null(mkdtemp(dir));
    snprintf(cmd, sizeof cmd, "mkdir -p '%s/docs' && cp '%s/docs/architecture.md' '%s/docs/'", dir,
             src, dir);
    assert_int_equal(system(cmd), 0);
    put(dir, "src/pool/pool_int.h", "/* pool internals */\n");
    put(dir, "src/core/internal.h", "/* core internals */\n");
    put(dir, "src/db/db_int.h", "/* db internals */\n");
}

/* Runs the check on root; the exit status, its output in out. */
static int run_check(const char *root, char *out, size_t n)
{
    char src[PATH_MAX], cmd[3 * PATH_MAX];
    source_root(src, sizeof src);
    snprintf(cmd, sizeof cmd, "bash '%s/scripts/check-layers.sh' '%s' 2>&1", src, root);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t len = fread(out, 1, n - 1, p);
    out[len] = '\0';
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void remove_tree(const char *dir)
{
    char cmd[PATH_MAX + 16];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

static void layers_check_passes_on_the_tree(void **state)
{
    (void)state;
    char src[PATH_MAX], out[8192];
    source_root(src, sizeof src);
    int rc = run_check(src, out, sizeof out);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
    assert_non_null(strstr(out, "no violation"));
}

static void layers_check_fails_on_an_include_below(void **state)
{
    (void)state;
    char dir[64], out[8192];
    make_tree(dir, sizeof dir);
    put(dir, "src/core/bad.c", "#include \"internal.h\"\n#include \"../pool/pool_int.h\"\n");
    int rc = run_check(dir, out, sizeof out);
    remove_tree(dir);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "src/core/bad.c:2: core includes src/pool/pool_int.h of pool"));
}

static void layers_check_fails_on_a_public_header_below(void **state)
{
    (void)state;
    char dir[64], out[8192];
    make_tree(dir, sizeof dir);
    put(dir, "src/db/bad.c", "#include \"dbkit/db.h\"\n#include \"dbkit/tx.h\"\n");
    int rc = run_check(dir, out, sizeof out);
    remove_tree(dir);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "src/db/bad.c:2: db includes dbkit/tx.h of tx"));
}

static void layers_check_fails_on_a_call_below(void **state)
{
    (void)state;
    char dir[64], out[8192];
    make_tree(dir, sizeof dir);
    put(dir, "src/driver/bad.c",
        "/* dbk__pool_acquire( in a comment is not a call */\n"
        "static void f(void) { const char *s = \"dbk_tx_run(\"; (void)s; }\n"
        "static void g(void) { dbk__batch_fail(0, 0, 0); }\n");
    int rc = run_check(dir, out, sizeof out);
    remove_tree(dir);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "src/driver/bad.c:3: driver calls dbk__batch_fail of batch"));
    assert_null(strstr(out, "bad.c:1:"));
    assert_null(strstr(out, "bad.c:2:"));
}

static void layers_check_fails_on_an_app_internal_include(void **state)
{
    (void)state;
    char dir[64], out[8192];
    make_tree(dir, sizeof dir);
    put(dir, "cli/bad.c", "#include \"dbkit/dbkit.h\"\n#include \"../src/db/db_int.h\"\n");
    int rc = run_check(dir, out, sizeof out);
    remove_tree(dir);
    assert_int_equal(rc, 1);
    assert_non_null(strstr(out, "cli/bad.c:2: apps include src/db/db_int.h"));
}

static void layers_check_allows_the_layers_above(void **state)
{
    (void)state;
    char dir[64], out[8192];
    make_tree(dir, sizeof dir);
    put(dir, "src/pool/ok.c",
        "#include \"../core/internal.h\"\n#include \"../db/db_int.h\"\n#include \"pool_int.h\"\n"
        "#include \"dbkit/db.h\"\n"
        "static void f(void) { dbk__db_batch_serial(0, 0, 0, 0, 0); dbk_db_query(0); }\n");
    put(dir, "cli/ok.c", "#include \"dbkit/dbkit.h\"\nstatic void g(void) { dbk_pool_open(0); }\n");
    int rc = run_check(dir, out, sizeof out);
    remove_tree(dir);
    if (rc != 0)
        fprintf(stderr, "%s", out);
    assert_int_equal(rc, 0);
}

int main(int argc, char **argv)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(layers_check_passes_on_the_tree),
        cmocka_unit_test(layers_check_fails_on_an_include_below),
        cmocka_unit_test(layers_check_fails_on_a_public_header_below),
        cmocka_unit_test(layers_check_fails_on_a_call_below),
        cmocka_unit_test(layers_check_fails_on_an_app_internal_include),
        cmocka_unit_test(layers_check_allows_the_layers_above),
    };
    if (argc > 1)
        cmocka_set_test_filter(argv[1]);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
