/*
 * The MongoDB backend: the operations the collection calls (coll.c) make
 * on MongoDB (see mongo.c for the backend's files). Documents are built
 * and validated by the code shared with the relational backends (coll.c);
 * what goes to the server is converted by mongo_bson.c.
 *
 * An update is checked by applying it to the current document in C; what
 * is sent is one findAndModify whose $set carries the checked values, so
 * concurrent $inc are atomic on the server. A page and its total run at
 * the same time on two pooled clients (the seed's Promise.all); a limit of
 * 0 sends no find, because MongoDB reads limit 0 as "no limit".
 *
 * Built only with libmongoc (DBKIT_HAVE_MONGOC); without it mongo.c
 * provides these functions, which say DBK_ECONFIG.
 */
#ifdef DBKIT_HAVE_MONGOC

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "doc/mongo_int.h"

/* ---- operations ---- */

dbk_rc dbk__mongo_insert(dbk_doc_coll *c, json_t *root, dbk_error *err)
{
    dbk__mongo_dates_to_ms(c, root);
    bson_t *b = dbk__mongo_doc_bson(c, root, err);
    if (!b)
        return err ? err->code : DBK_EINVALID;
    dbk__mongo_session s;
    dbk__mongo_sess_open(c, &s);
    bson_error_t be;
    dbk_rc rc = DBK_OK;
    if (!mongoc_collection_insert_one(s.coll, b, NULL, NULL, &be))
        rc = dbk__mongo_error(c, &be, "insert", err);
    dbk__mongo_sess_close(c, &s);
    bson_destroy(b);
    return rc;
}

dbk_rc dbk__mongo_count(dbk_doc_coll *c, const char *filter, int64_t *out, dbk_error *err)
{
    bson_t *f;
    dbk_rc rc = dbk__mongo_filter_bson(c, filter, &f, err);
    if (rc)
        return rc;
    dbk__mongo_session s;
    dbk__mongo_sess_open(c, &s);
    bson_error_t be;
    int64_t n = mongoc_collection_count_documents(s.coll, f, NULL, NULL, NULL, &be);
    if (n < 0)
        rc = dbk__mongo_error(c, &be, "count", err);
    else
        *out = n;
    dbk__mongo_sess_close(c, &s);
    bson_destroy(f);
    return rc;
}

typedef struct count_job {
    dbk_doc_coll *c;
    const bson_t *filter;
    int64_t n;
    bson_error_t be;
} count_job;

static void *count_thread(void *arg)
{
    count_job *j = arg;
    dbk__mongo_session s;
    dbk__mongo_sess_open(j->c, &s);
    j->n = mongoc_collection_count_documents(s.coll, j->filter, NULL, NULL, NULL, &j->be);
    dbk__mongo_sess_close(j->c, &s);
    return NULL;
}

dbk_rc dbk__mongo_find(dbk_doc_coll *c, const dbk_doc_find_opts *o, json_t *proj,
                       dbk_doc_page *page, dbk_error *err)
{
    bson_t *f;
    dbk_rc rc = dbk__mongo_filter_bson(c, o->filter, &f, err);
    if (rc)
        return rc;
    bson_t opts = BSON_INITIALIZER;
    if ((rc = dbk__mongo_sort_bson(c, o->sort, &opts, err)) != DBK_OK) {
        bson_destroy(&opts);
        bson_destroy(f);
        return rc;
    }
    if (o->skip > 0)
        BSON_APPEND_INT64(&opts, "skip", o->skip);
    if (o->limit >= 0) /* resolved by dbk_doc_find: one more than the page, for has_more */
        BSON_APPEND_INT64(&opts, "limit", o->limit + 1);
    count_job job = {c, f, -1, {0}};
    pthread_t th;
    bool counting = false;
    if (o->with_total)
        counting = pthread_create(&th, NULL, count_thread, &job) == 0;
    if (o->with_total && !counting)
        count_thread(&job); /* no thread: one after the other */
    size_t cap = 0;
    {
        dbk__mongo_session s;
        dbk__mongo_sess_open(c, &s);
        mongoc_cursor_t *cur = mongoc_collection_find_with_opts(s.coll, f, &opts, NULL);
        const bson_t *bd;
        while (rc == DBK_OK && mongoc_cursor_next(cur, &bd)) {
            json_t *root;
            if ((rc = dbk__mongo_from_bson(bd, &root, err)) != DBK_OK)
                break;
            if (proj && (rc = dbk__doc_project(c, proj, &root, err)) != DBK_OK)
                break;
            if (page->count == cap) {
                size_t ncap = cap ? cap * 2 : 16;
                dbk_doc **nd = realloc(page->docs, ncap * sizeof *nd);
                if (!nd) {
                    json_decref(root);
                    rc = dbk__err(err, DBK_ENOMEM, "out of memory");
                    break;
                }
                page->docs = nd;
                cap = ncap;
            }
            if ((rc = dbk__doc_wrap(root, &page->docs[page->count], err)) != DBK_OK)
                break;
            page->count++;
        }
        bson_error_t be;
        if (rc == DBK_OK && mongoc_cursor_error(cur, &be))
            rc = dbk__mongo_error(c, &be, "find", err);
        mongoc_cursor_destroy(cur);
        dbk__mongo_sess_close(c, &s);
    }
    if (counting)
        pthread_join(th, NULL);
    if (rc == DBK_OK && o->with_total) {
        if (job.n < 0)
            rc = dbk__mongo_error(c, &job.be, "count", err);
        else
            page->total = job.n;
    }
    bson_destroy(&opts);
    bson_destroy(f);
    return rc;
}

static dbk_rc reply_value(const dbk_doc_coll *c, const bson_t *reply, json_t **out,
                          dbk_error *err)
{
    bson_iter_t it;
    if (!bson_iter_init_find(&it, reply, "value") || !BSON_ITER_HOLDS_DOCUMENT(&it))
        return dbk__err(err, DBK_ENOT_FOUND, "no document with this _id in \"%s\"",
                        c->schema->collection);
    uint32_t len;
    const uint8_t *data;
    bson_iter_document(&it, &len, &data);
    bson_t doc;
    if (!bson_init_static(&doc, data, len))
        return dbk__err(err, DBK_EINTERNAL, "malformed reply from MongoDB");
    return dbk__mongo_from_bson(&doc, out, err);
}

/* Reads the current document (ENOT_FOUND when none). */
static dbk_rc get_by_id(dbk_doc_coll *c, dbk__mongo_session *s, const char *id, json_t **out,
                        dbk_error *err)
{
    bson_t q = BSON_INITIALIZER;
    dbk__mongo_id_query(c, id, &q);
    bson_t opts = BSON_INITIALIZER;
    BSON_APPEND_INT64(&opts, "limit", 1);
    mongoc_cursor_t *cur = mongoc_collection_find_with_opts(s->coll, &q, &opts, NULL);
    const bson_t *bd;
    dbk_rc rc;
    bson_error_t be;
    if (mongoc_cursor_next(cur, &bd))
        rc = dbk__mongo_from_bson(bd, out, err);
    else if (mongoc_cursor_error(cur, &be))
        rc = dbk__mongo_error(c, &be, "find", err);
    else
        rc = dbk__err(err, DBK_ENOT_FOUND, "no document with this _id in \"%s\"",
                      c->schema->collection);
    mongoc_cursor_destroy(cur);
    bson_destroy(&opts);
    bson_destroy(&q);
    return rc;
}

dbk_rc dbk__mongo_get(dbk_doc_coll *c, const char *id, json_t **out, dbk_error *err)
{
    *out = NULL;
    dbk__mongo_session s;
    dbk__mongo_sess_open(c, &s);
    dbk_rc rc = get_by_id(c, &s, id, out, err);
    dbk__mongo_sess_close(c, &s);
    return rc;
}

/* The update sent to the server: $set of the checked values of every set
 * path and of the updated timestamp, $unset, $inc as given. */
/* set[path] = a copy of v with its typed fields in extended JSON. */
static dbk_rc set_typed(const dbk_doc_coll *c, json_t *set, const char *path, json_t *v,
                        dbk_error *err)
{
    json_t *copy = json_deep_copy(v);
    if (!copy)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    dbk_rc rc = dbk__mongo_to_ext(c, path, &copy, err);
    if (rc == DBK_OK && json_object_set_new(set, path, copy) != 0)
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    if (rc != DBK_OK)
        json_decref(copy);
    return rc;
}

static dbk_rc server_update(const dbk_doc_coll *c, json_t *upd, json_t *checked, json_t **out,
                            dbk_error *err)
{
    dbk_rc rc;
    json_t *set = json_object(), *u = json_object();
    if (!set || !u)
        goto oom;
    bool ops = json_object_size(upd) > 0 && json_object_iter_key(json_object_iter(upd))[0] == '$';
    const char *key;
    json_t *v;
    json_t *setsrc = ops ? json_object_get(upd, "$set") : upd;
    if (setsrc) {
        json_object_foreach(setsrc, key, v)
        {
            json_t *cv = dbk__doc_path_get(checked, key);
            if ((rc = set_typed(c, set, key, cv ? cv : v, err)) != DBK_OK)
                goto fail;
        }
    }
    if (c->updated &&
        (rc = set_typed(c, set, c->updated, dbk__doc_path_get(checked, c->updated), err)) != DBK_OK)
        goto fail;
    if (json_object_size(set) && json_object_set(u, "$set", set) != 0)
        goto oom;
    if (ops) {
        json_t *x;
        if ((x = json_object_get(upd, "$unset")) && json_object_set(u, "$unset", x) != 0)
            goto oom;
        if ((x = json_object_get(upd, "$inc")) && json_object_set(u, "$inc", x) != 0)
            goto oom;
    }
    json_decref(set);
    *out = u;
    return DBK_OK;
oom:
    rc = dbk__err(err, DBK_ENOMEM, "out of memory");
fail:
    json_decref(set);
    json_decref(u);
    return rc;
}

dbk_rc dbk__mongo_update(dbk_doc_coll *c, const char *id, json_t *upd, json_t **out,
                         dbk_error *err)
{
    *out = NULL;
    dbk__mongo_session s;
    dbk__mongo_sess_open(c, &s);
    json_t *cur = NULL, *su = NULL;
    bson_t *bu = NULL;
    dbk_rc rc = get_by_id(c, &s, id, &cur, err);
    if (rc)
        goto done;
    if ((rc = dbk__doc_apply_update(c, cur, upd, err)) != DBK_OK)
        goto done;
    if (c->updated) {
        char ts[40];
        dbk__doc_date_format(dbk__doc_now_usec(), ts);
        if ((rc = dbk__doc_path_set(cur, c->updated, json_string(ts), err)) != DBK_OK)
            goto done;
    }
    if ((rc = dbk__doc_check(c, cur, err)) != DBK_OK)
        goto done;
    if ((rc = server_update(c, upd, cur, &su, err)) != DBK_OK)
        goto done;
    if (!(bu = dbk__mongo_to_bson(su, err))) {
        rc = err ? err->code : DBK_EINVALID;
        goto done;
    }
    bson_t q = BSON_INITIALIZER;
    dbk__mongo_id_query(c, id, &q);
    mongoc_find_and_modify_opts_t *fam = mongoc_find_and_modify_opts_new();
    mongoc_find_and_modify_opts_set_update(fam, bu);
    mongoc_find_and_modify_opts_set_flags(fam, MONGOC_FIND_AND_MODIFY_RETURN_NEW);
    bson_t reply;
    bson_error_t be;
    if (!mongoc_collection_find_and_modify_with_opts(s.coll, &q, fam, &reply, &be))
        rc = dbk__mongo_error(c, &be, "findAndModify", err);
    else
        rc = reply_value(c, &reply, out, err);
    bson_destroy(&reply);
    mongoc_find_and_modify_opts_destroy(fam);
    bson_destroy(&q);
done:
    dbk__mongo_sess_close(c, &s);
    if (bu)
        bson_destroy(bu);
    json_decref(su);
    json_decref(cur);
    return rc;
}

dbk_rc dbk__mongo_delete(dbk_doc_coll *c, const char *id, json_t **out, dbk_error *err)
{
    *out = NULL;
    dbk__mongo_session s;
    dbk__mongo_sess_open(c, &s);
    bson_t q = BSON_INITIALIZER;
    dbk__mongo_id_query(c, id, &q);
    mongoc_find_and_modify_opts_t *fam = mongoc_find_and_modify_opts_new();
    mongoc_find_and_modify_opts_set_flags(fam, MONGOC_FIND_AND_MODIFY_REMOVE);
    bson_t reply;
    bson_error_t be;
    dbk_rc rc;
    if (!mongoc_collection_find_and_modify_with_opts(s.coll, &q, fam, &reply, &be))
        rc = dbk__mongo_error(c, &be, "findAndModify", err);
    else
        rc = reply_value(c, &reply, out, err);
    bson_destroy(&reply);
    mongoc_find_and_modify_opts_destroy(fam);
    bson_destroy(&q);
    dbk__mongo_sess_close(c, &s);
    return rc;
}

dbk_rc dbk__mongo_ensure(dbk_doc_coll *c, dbk_error *err)
{
    size_t n = dbk__doc_nindexes(c);
    if (n == 0)
        return DBK_OK;
    json_t *cmd = json_object(), *list = json_array();
    if (!cmd || !list) {
        json_decref(cmd);
        json_decref(list);
        return dbk__err(err, DBK_ENOMEM, "out of memory");
    }
    json_object_set_new(cmd, "createIndexes", json_string(c->schema->collection));
    for (size_t i = 0; i < n; i++) {
        char name[128];
        const char *keys;
        bool unique;
        dbk__doc_index_get(c, i, name, sizeof name, &keys, &unique);
        json_t *key = json_object(), *ix = json_object();
        char path[128];
        for (const char *p = keys; *p;) {
            const char *comma = strchr(p, ',');
            bool desc = *p == '-';
            if (desc)
                p++;
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            snprintf(path, sizeof path, "%.*s", (int)len, p);
            json_object_set_new(key, path, json_integer(desc ? -1 : 1));
            p += len + (comma ? 1 : 0);
        }
        json_object_set_new(ix, "key", key);
        json_object_set_new(ix, "name", json_string(name));
        if (unique)
            json_object_set_new(ix, "unique", json_true());
        json_array_append_new(list, ix);
    }
    json_object_set_new(cmd, "indexes", list);
    bson_t *b = dbk__mongo_to_bson(cmd, err);
    json_decref(cmd);
    if (!b)
        return err ? err->code : DBK_EINVALID;
    dbk__mongo_session s;
    dbk__mongo_sess_open(c, &s);
    bson_t reply;
    bson_error_t be;
    dbk_rc rc = DBK_OK;
    if (!mongoc_collection_command_simple(s.coll, b, NULL, &reply, &be))
        rc = dbk__mongo_error(c, &be, "createIndexes", err);
    bson_destroy(&reply);
    dbk__mongo_sess_close(c, &s);
    bson_destroy(b);
    return rc;
}

dbk_rc dbk__mongo_drop(dbk_doc_coll *c, dbk_error *err)
{
    dbk__mongo_session s;
    dbk__mongo_sess_open(c, &s);
    bson_error_t be;
    dbk_rc rc = DBK_OK;
    if (!mongoc_collection_drop_with_opts(s.coll, NULL, &be) && be.code != 26 &&
        !strstr(be.message, "ns not found"))
        rc = dbk__mongo_error(c, &be, "drop", err);
    dbk__mongo_sess_close(c, &s);
    return rc;
}

#endif /* DBKIT_HAVE_MONGOC */
