/*
 * libFuzzer target for the configuration URL parser and the redactor.
 *
 * Each input is used as a DATABASE_URL (a NUL-terminated copy, since the
 * API takes C strings) with a small fixed environment, so the env-merging
 * paths run too. On success the target renders the redacted URL, checks
 * that it does not depend on the password (the same config with another
 * password renders the same bytes), and parses that rendering
 * again, which must give the same rendering: a config always prints a URL
 * that dbkit accepts and that means the same thing.
 * dbk_redact_url() runs on every input with a large and a tiny buffer,
 * and must report the same length for both. The checks trap, so a broken
 * invariant is a crash libFuzzer keeps.
 *
 * Build: cmake -DCMAKE_C_COMPILER=clang -DDBKIT_FUZZ=ON ...; run with a
 * copy of tests/fuzz/corpus/config_url so new inputs stay out of git.
 */
#include "core/config_int.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *fuzz_getenv(void *ctx, const char *name)
{
    (void)ctx;
    if (strcmp(name, "DB_PORT") == 0)
        return "6000";
    if (strcmp(name, "DB_POOL_MIN_IDLE") == 0)
        return "1";
    return NULL;
}

static void visit(void *ctx, const char *key, const char *value, dbk_config_source src)
{
    size_t *n = ctx;
    if (!key || !value || src > DBK_CONFIG_SOURCE_CODE)
        __builtin_trap();
    *n += strlen(key) + strlen(value);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 20000)
        return 0;
    char *url = malloc(size + 1);
    if (!url)
        return 0;
    memcpy(url, data, size);
    url[size] = '\0';

    char big[24576];
    char tiny[7];
    size_t n1 = dbk_redact_url(url, big, sizeof big);
    size_t n2 = dbk_redact_url(url, tiny, sizeof tiny);
    if (n1 != n2 || (n1 < sizeof big && strlen(big) != n1) || strlen(tiny) >= sizeof tiny)
        __builtin_trap();

    dbk_config *cfg = NULL;
    dbk_error err;
    dbk_rc rc = dbk_config_from(url, fuzz_getenv, NULL, &cfg, &err);
    if (rc == DBK_OK) {
        size_t need = dbk_config_redacted_url(cfg, big, sizeof big);
        if (need < sizeof big) {
            /* The rendering must not depend on the password: the same
             * config with another password renders the same bytes. (A
             * substring search would trip on a password that happens to
             * equal a host name.) */
            if (cfg->password) {
                dbk_config *other = NULL;
                if (dbk_config_clone(cfg, &other, &err) == DBK_OK) {
                    char *swapped = strdup("x");
                    if (swapped) {
                        explicit_bzero(other->password, strlen(other->password));
                        free(other->password);
                        other->password = swapped;
                        char *alt = malloc(sizeof big);
                        if (alt) {
                            dbk_config_redacted_url(other, alt, sizeof big);
                            if (strcmp(alt, big) != 0)
                                __builtin_trap();
                            free(alt);
                        }
                    }
                    dbk_config_free(other);
                }
            }
            /* The rendering must parse again and render the same. */
            if (need <= 8192) {
                dbk_config *again = NULL;
                if (dbk_config_from(big, NULL, NULL, &again, &err) != DBK_OK)
                    __builtin_trap();
                char *first = strdup(big);
                if (first) {
                    dbk_config_redacted_url(again, big, sizeof big);
                    if (strcmp(first, big) != 0)
                        __builtin_trap();
                    free(first);
                }
                dbk_config_free(again);
            }
        }
        size_t total = 0;
        dbk_config_dump(cfg, visit, &total);
        dbk_config *copy = NULL;
        if (dbk_config_clone(cfg, &copy, &err) == DBK_OK) {
            (void)dbk_config_set(copy, "pool_max", "5", &err);
            (void)dbk_config_set(copy, "host", url, &err);
            dbk_config_free(copy);
        }
        dbk_config_free(cfg);
    } else if (cfg != NULL || rc != err.code) {
        __builtin_trap();
    }
    free(url);
    return 0;
}
