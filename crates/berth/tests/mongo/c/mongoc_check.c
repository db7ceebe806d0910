/*
 * mongoc-check drives the MongoDB C driver (libmongoc, Debian's
 * libmongoc-dev, 1.23) against a Berth node's MongoDB listener, as an
 * unmodified application would, for the `mongo_drivers` integration tests
 * (crates/berth/tests/it/mongo_drivers.rs). The test compiles it with
 *
 *     cc -o mongoc-check mongoc_check.c $(pkg-config --cflags --libs libmongoc-1.0)
 *
 * Usage: mongoc-check CHECK URI
 *        mongoc-check app|app-denied DB.COLL
 *
 * URI is the connection string a user would write, e.g.
 * mongodb://alice:pw@127.0.0.1:PORT/?tls=true&tlsCAFile=CA&authMechanism=SCRAM-SHA-256
 * A check prints "ok" and exits 0 when the server behaved as MongoDB does,
 * and prints "FAIL CHECK: reason" and exits 1 otherwise. Checks:
 *
 *   crud       inserts (one, many, a duplicate _id: 11000), finds (filter,
 *              sort, skip, limit, projection, batches read with getMore),
 *              count, distinct, updates ($set/$inc, many, upsert,
 *              replacement), findAndModify, an aggregation ($match, $group,
 *              $sort), deletes, an error (code 2) and a drop, on shop.users
 *   seed       one document in shop.private
 *   denied     reading and writing shop.private fail with code 13
 *   login      a ping succeeds (the client logged in)
 *   bad-login  the first command fails authentication
 *
 * The app checks take their connection string from MONGODB_URI, as an
 * application started by `berth container-run` does (the container tests,
 * crates/berth/tests/it/container.rs), and work on DB.COLL (the collection
 * is what follows the first dot, e.g. x./apps/a/users):
 *
 *   app         writes, reads, updates and deletes documents of DB.COLL
 *   app-denied  reading and writing DB.COLL fail with code 13
 */

#include <mongoc/mongoc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *check_name = "";

static void fail (const char *format, ...)
{
   va_list args;
   fprintf (stderr, "FAIL %s: ", check_name);
   va_start (args, format);
   vfprintf (stderr, format, args);
   va_end (args);
   fprintf (stderr, "\n");
   exit (1);
}

#define EXPECT(cond, ...)     \
   do {                       \
      if (!(cond)) {          \
         fail (__VA_ARGS__);  \
      }                       \
   } while (0)

/* Every document made from JSON, freed at exit. */
#define MAX_DOCS 256
static bson_t *docs[MAX_DOCS];
static int n_docs;

static void free_docs (void)
{
   for (int i = 0; i < n_docs; i++) {
      bson_destroy (docs[i]);
   }
}

/* A document from (relaxed extended) JSON; numbers without a point are
 * int32. */
static bson_t *J (const char *json)
{
   bson_error_t error;
   bson_t *b = bson_new_from_json ((const uint8_t *) json, -1, &error);
   EXPECT (b, "bad JSON %s: %s", json, error.message);
   EXPECT (n_docs < MAX_DOCS, "too many documents");
   docs[n_docs++] = b;
   return b;
}

/* The JSON of a document, for failure messages (leaked: we exit next). */
static char *S (const bson_t *b)
{
   return bson_as_relaxed_extended_json (b, NULL);
}

/* A number at dotted `path` of `b` as an int64; -999 when absent. */
static int64_t num (const bson_t *b, const char *path)
{
   bson_iter_t it, found;
   if (!bson_iter_init (&it, b) || !bson_iter_find_descendant (&it, path, &found)) {
      return -999;
   }
   return bson_iter_as_int64 (&found);
}

static double dbl (const bson_t *b, const char *path)
{
   bson_iter_t it, found;
   if (!bson_iter_init (&it, b) || !bson_iter_find_descendant (&it, path, &found) ||
       !BSON_ITER_HOLDS_NUMBER (&found)) {
      return -999.0;
   }
   return bson_iter_as_double (&found);
}

/* The string at `path` of `b`, or "" when absent or not a string. */
static const char *str (const bson_t *b, const char *path)
{
   bson_iter_t it, found;
   if (!bson_iter_init (&it, b) || !bson_iter_find_descendant (&it, path, &found) ||
       !BSON_ITER_HOLDS_UTF8 (&found)) {
      return "";
   }
   return bson_iter_utf8 (&found, NULL);
}

static int get_mores;

static void command_started (const mongoc_apm_command_started_t *event)
{
   if (strcmp (mongoc_apm_command_started_get_command_name (event), "getMore") == 0) {
      get_mores++;
   }
}

static mongoc_client_t *open_client (const char *uri_string)
{
   bson_error_t error;
   mongoc_uri_t *uri = mongoc_uri_new_with_error (uri_string, &error);
   EXPECT (uri, "bad URI: %s", error.message);
   mongoc_client_t *client = mongoc_client_new_from_uri_with_error (uri, &error);
   EXPECT (client, "client: %s", error.message);
   mongoc_uri_destroy (uri);
   mongoc_client_set_error_api (client, MONGOC_ERROR_API_VERSION_2);
   mongoc_apm_callbacks_t *callbacks = mongoc_apm_callbacks_new ();
   mongoc_apm_set_command_started_cb (callbacks, command_started);
   mongoc_client_set_apm_callbacks (client, callbacks, NULL);
   mongoc_apm_callbacks_destroy (callbacks);
   return client;
}

/* Every document of a cursor (copies, freed at exit); the count. */
static int drain (mongoc_cursor_t *cursor, bson_t **out, int max, const char *what)
{
   const bson_t *doc;
   bson_error_t error;
   int n = 0;
   while (mongoc_cursor_next (cursor, &doc)) {
      if (out && n < max) {
         out[n] = bson_copy (doc);
         EXPECT (n_docs < MAX_DOCS, "too many documents");
         docs[n_docs++] = out[n];
      }
      n++;
   }
   EXPECT (!mongoc_cursor_error (cursor, &error), "%s: %s (code %u)", what, error.message,
           error.code);
   mongoc_cursor_destroy (cursor);
   return n;
}

static int has_name (char **names, const char *name)
{
   for (char **n = names; n && *n; n++) {
      if (strcmp (*n, name) == 0) {
         return 1;
      }
   }
   return 0;
}

static void crud (mongoc_client_t *client)
{
   bson_error_t error;
   bson_t reply;
   mongoc_database_t *db = mongoc_client_get_database (client, "shop");
   mongoc_collection_t *users = mongoc_client_get_collection (client, "shop", "users");
   /* Dropping a collection that does not exist may say so (26). */
   if (!mongoc_collection_drop_with_opts (users, NULL, &error)) {
      EXPECT (error.code == 26, "drop before: %s", error.message);
   }

   /* Inserts: one, many, generated ObjectIds, a duplicate _id. */
   EXPECT (mongoc_collection_insert_one (
              users, J ("{\"_id\": 1, \"name\": \"ada\", \"age\": 36, \"tags\": [\"math\", \"code\"]}"),
              NULL, &reply, &error),
           "insert_one: %s", error.message);
   EXPECT (num (&reply, "insertedCount") == 1, "insert_one reply %s", S (&reply));
   bson_destroy (&reply);
   const bson_t *many[10];
   for (int i = 0; i < 10; i++) {
      char json[128];
      snprintf (json, sizeof json, "{\"name\": \"user%d\", \"age\": %d, \"group\": %d}", i, 20 + i, i % 3);
      many[i] = J (json);
   }
   EXPECT (mongoc_collection_insert_many (users, many, 10, NULL, &reply, &error),
           "insert_many: %s", error.message);
   EXPECT (num (&reply, "insertedCount") == 10, "insert_many reply %s", S (&reply));
   bson_destroy (&reply);
   EXPECT (!mongoc_collection_insert_one (users, J ("{\"_id\": 1, \"name\": \"dup\"}"), NULL, NULL, &error),
           "a duplicate _id was accepted");
   EXPECT (error.code == 11000, "duplicate: code %u: %s", error.code, error.message);
   /* 1.0 is the same _id as 1. */
   EXPECT (!mongoc_collection_insert_one (users, J ("{\"_id\": 1.0}"), NULL, NULL, &error),
           "_id 1.0 was accepted beside _id 1");
   EXPECT (error.code == 11000, "_id 1.0: code %u: %s", error.code, error.message);

   char **names = mongoc_database_get_collection_names_with_opts (db, NULL, &error);
   EXPECT (names, "list_collection_names: %s", error.message);
   EXPECT (has_name (names, "users"), "users not in list_collection_names");
   bson_strfreev (names);
   names = mongoc_client_get_database_names_with_opts (client, NULL, &error);
   EXPECT (names, "list_database_names: %s", error.message);
   EXPECT (has_name (names, "shop"), "shop not in list_database_names");
   bson_strfreev (names);

   /* Finds: filter, sort, skip, limit, projection, batches. */
   bson_t *found[16];
   int n = drain (mongoc_collection_find_with_opts (users, J ("{\"name\": \"ada\"}"), NULL, NULL),
                  found, 16, "find ada");
   EXPECT (n == 1 && num (found[0], "age") == 36, "find_one ada: %d", n);
   n = drain (mongoc_collection_find_with_opts (users, J ("{\"age\": {\"$gte\": 25}}"),
                                                J ("{\"sort\": {\"age\": -1}}"), NULL),
              found, 16, "sorted find");
   int64_t ages[] = {36, 29, 28, 27, 26, 25};
   EXPECT (n == 6, "sorted find: %d documents", n);
   for (int i = 0; i < 6; i++) {
      EXPECT (num (found[i], "age") == ages[i], "sorted find: %d is %s", i, S (found[i]));
   }
   n = drain (mongoc_collection_find_with_opts (
                 users, J ("{}"),
                 J ("{\"projection\": {\"name\": 1, \"_id\": 0}, \"sort\": {\"age\": 1}, \"skip\": 2, \"limit\": 3}"),
                 NULL),
              found, 16, "page");
   EXPECT (n == 3, "page: %d documents", n);
   for (int i = 0; i < 3; i++) {
      char want[16];
      snprintf (want, sizeof want, "user%d", i + 2);
      EXPECT (bson_count_keys (found[i]) == 1 && strcmp (str (found[i], "name"), want) == 0,
              "page %d: %s", i, S (found[i]));
   }
   int before = get_mores;
   n = drain (mongoc_collection_find_with_opts (users, J ("{\"group\": 1}"), J ("{\"batchSize\": 2}"), NULL),
              NULL, 0, "batched find");
   EXPECT (n == 3, "batched find: %d", n);
   n = drain (mongoc_collection_find_with_opts (users, J ("{}"), J ("{\"batchSize\": 3}"), NULL), NULL, 0,
              "find in batches");
   EXPECT (n == 11, "every document in batches of 3: %d", n);
   EXPECT (get_mores - before >= 4, "getMores sent: %d", get_mores - before);
   n = drain (mongoc_collection_find_with_opts (users, J ("{\"tags\": \"code\"}"), NULL, NULL), found, 16,
              "array element match");
   EXPECT (n == 1 && num (found[0], "_id") == 1, "array element match: %d", n);
   int64_t count = mongoc_collection_count_documents (users, J ("{\"group\": 0}"), NULL, NULL, NULL, &error);
   EXPECT (count == 4, "count_documents %lld: %s", (long long) count, error.message);
   count = mongoc_collection_estimated_document_count (users, NULL, NULL, NULL, &error);
   EXPECT (count == 11, "estimated_document_count %lld: %s", (long long) count, error.message);
   /* distinct has no helper in libmongoc: the command, as its manual shows. */
   EXPECT (mongoc_collection_read_command_with_opts (users, J ("{\"distinct\": \"users\", \"key\": \"group\"}"),
                                                     NULL, NULL, &reply, &error),
           "distinct: %s", error.message);
   int seen[3] = {0, 0, 0}, values = 0;
   bson_iter_t it, arr;
   EXPECT (bson_iter_init_find (&it, &reply, "values") && BSON_ITER_HOLDS_ARRAY (&it) &&
              bson_iter_recurse (&it, &arr),
           "distinct reply %s", S (&reply));
   while (bson_iter_next (&arr)) {
      int64_t v = bson_iter_as_int64 (&arr);
      EXPECT (v >= 0 && v < 3 && !seen[v], "distinct reply %s", S (&reply));
      seen[v] = 1;
      values++;
   }
   EXPECT (values == 3, "distinct reply %s", S (&reply));
   bson_destroy (&reply);

   /* Updates. */
   EXPECT (mongoc_collection_update_one (users, J ("{\"name\": \"ada\"}"),
                                         J ("{\"$set\": {\"city\": \"London\"}, \"$inc\": {\"age\": 1}}"), NULL,
                                         &reply, &error),
           "update_one: %s", error.message);
   EXPECT (num (&reply, "matchedCount") == 1 && num (&reply, "modifiedCount") == 1, "update_one %s",
           S (&reply));
   bson_destroy (&reply);
   n = drain (mongoc_collection_find_with_opts (users, J ("{\"_id\": 1}"), NULL, NULL), found, 16, "find 1");
   EXPECT (n == 1 && num (found[0], "age") == 37 && strcmp (str (found[0], "city"), "London") == 0,
           "$inc and $set applied: %s", S (found[0]));
   EXPECT (mongoc_collection_update_many (users, J ("{\"group\": 2}"), J ("{\"$set\": {\"flag\": true}}"),
                                          NULL, &reply, &error),
           "update_many: %s", error.message);
   EXPECT (num (&reply, "matchedCount") == 3 && num (&reply, "modifiedCount") == 3, "update_many %s",
           S (&reply));
   bson_destroy (&reply);
   EXPECT (mongoc_collection_update_one (users, J ("{\"name\": \"grace\"}"), J ("{\"$set\": {\"age\": 85}}"),
                                         J ("{\"upsert\": true}"), &reply, &error),
           "upsert: %s", error.message);
   EXPECT (num (&reply, "upsertedCount") == 1 && bson_has_field (&reply, "upsertedId"), "upsert %s",
           S (&reply));
   bson_destroy (&reply);
   n = drain (mongoc_collection_find_with_opts (users, J ("{\"name\": \"grace\"}"), NULL, NULL), found, 16,
              "find grace");
   EXPECT (n == 1 && num (found[0], "age") == 85, "upserted: %d", n);
   EXPECT (mongoc_collection_replace_one (users, J ("{\"_id\": 1}"), J ("{\"name\": \"ada lovelace\"}"), NULL,
                                          &reply, &error),
           "replace_one: %s", error.message);
   EXPECT (num (&reply, "modifiedCount") == 1, "replace_one %s", S (&reply));
   bson_destroy (&reply);
   n = drain (mongoc_collection_find_with_opts (users, J ("{\"_id\": 1}"), NULL, NULL), found, 16,
              "find replaced");
   EXPECT (n == 1 && bson_count_keys (found[0]) == 2 && num (found[0], "_id") == 1 &&
              strcmp (str (found[0], "name"), "ada lovelace") == 0,
           "replaced: %s", S (found[0]));
   mongoc_find_and_modify_opts_t *fam = mongoc_find_and_modify_opts_new ();
   mongoc_find_and_modify_opts_set_update (fam, J ("{\"$push\": {\"log\": \"seen\"}}"));
   mongoc_find_and_modify_opts_set_flags (fam, MONGOC_FIND_AND_MODIFY_RETURN_NEW);
   EXPECT (mongoc_collection_find_and_modify_with_opts (users, J ("{\"name\": \"user0\"}"), fam, &reply, &error),
           "find_one_and_update: %s", error.message);
   mongoc_find_and_modify_opts_destroy (fam);
   EXPECT (strcmp (str (&reply, "value.log.0"), "seen") == 0 && num (&reply, "value.age") == 20,
           "find_one_and_update %s", S (&reply));
   bson_destroy (&reply);

   /* Aggregation. */
   n = drain (mongoc_collection_aggregate (
                 users, MONGOC_QUERY_NONE,
                 J ("{\"pipeline\": [{\"$match\": {\"group\": {\"$exists\": true}}},"
                    " {\"$group\": {\"_id\": \"$group\", \"n\": {\"$sum\": 1}, \"avg\": {\"$avg\": \"$age\"}}},"
                    " {\"$sort\": {\"_id\": 1}}]}"),
                 NULL, NULL),
              found, 16, "aggregate");
   int64_t counts[] = {4, 3, 3};
   EXPECT (n == 3, "aggregate: %d groups", n);
   for (int i = 0; i < 3; i++) {
      EXPECT (num (found[i], "_id") == i && num (found[i], "n") == counts[i], "aggregate group %d: %s", i,
              S (found[i]));
   }
   EXPECT (dbl (found[0], "avg") == 24.5, "aggregate $avg: %s", S (found[0]));

   /* Deletes. */
   EXPECT (mongoc_collection_delete_one (users, J ("{\"name\": \"user1\"}"), NULL, &reply, &error),
           "delete_one: %s", error.message);
   EXPECT (num (&reply, "deletedCount") == 1, "delete_one %s", S (&reply));
   bson_destroy (&reply);
   EXPECT (mongoc_collection_delete_many (users, J ("{\"group\": 2}"), NULL, &reply, &error),
           "delete_many: %s", error.message);
   EXPECT (num (&reply, "deletedCount") == 3, "delete_many %s", S (&reply));
   bson_destroy (&reply);
   count = mongoc_collection_count_documents (users, J ("{}"), NULL, NULL, NULL, &error);
   EXPECT (count == 8, "count after deletes %lld: %s", (long long) count, error.message);

   /* Errors in MongoDB's terms; the connection keeps working after them. */
   mongoc_cursor_t *bad = mongoc_collection_find_with_opts (users, J ("{\"$bogus\": 1}"), NULL, NULL);
   const bson_t *doc;
   EXPECT (!mongoc_cursor_next (bad, &doc), "an unknown top-level operator was accepted");
   EXPECT (mongoc_cursor_error (bad, &error) && error.code == 2, "bad operator: code %u: %s", error.code,
           error.message);
   mongoc_cursor_destroy (bad);
   n = drain (mongoc_collection_find_with_opts (users, J ("{\"_id\": 1}"), NULL, NULL), NULL, 0,
              "served after an error");
   EXPECT (n == 1, "served after an error: %d", n);

   EXPECT (mongoc_collection_drop_with_opts (users, NULL, &error), "drop: %s", error.message);
   names = mongoc_database_get_collection_names_with_opts (db, NULL, &error);
   EXPECT (names, "list after drop: %s", error.message);
   EXPECT (!has_name (names, "users"), "users still listed after drop");
   bson_strfreev (names);
   mongoc_collection_destroy (users);
   mongoc_database_destroy (db);
}

static void seed (mongoc_client_t *client)
{
   bson_error_t error;
   mongoc_collection_t *private = mongoc_client_get_collection (client, "shop", "private");
   EXPECT (mongoc_collection_insert_one (private, J ("{\"_id\": \"secret\", \"x\": 1}"), NULL, NULL, &error),
           "seed insert: %s", error.message);
   int64_t n = mongoc_collection_count_documents (private, J ("{}"), NULL, NULL, NULL, &error);
   EXPECT (n == 1, "seeded %lld: %s", (long long) n, error.message);
   mongoc_collection_destroy (private);
}

static void denied (mongoc_client_t *client)
{
   bson_error_t error;
   const bson_t *doc;
   mongoc_collection_t *private = mongoc_client_get_collection (client, "shop", "private");
   mongoc_cursor_t *cursor = mongoc_collection_find_with_opts (private, J ("{}"), NULL, NULL);
   EXPECT (!mongoc_cursor_next (cursor, &doc), "a read of a table the user may not read succeeded");
   EXPECT (mongoc_cursor_error (cursor, &error) && error.code == 13, "denied read: code %u: %s", error.code,
           error.message);
   mongoc_cursor_destroy (cursor);
   EXPECT (!mongoc_collection_insert_one (private, J ("{\"x\": 1}"), NULL, NULL, &error),
           "a write to a table the user may not write succeeded");
   EXPECT (error.code == 13, "denied write: code %u: %s", error.code, error.message);
   mongoc_collection_destroy (private);
}

/* The namespace of an app check: database and collection. */
static const char *app_db;
static const char *app_coll;

static void app (mongoc_client_t *client)
{
   bson_error_t error;
   bson_t reply;
   bson_t *found[4];
   mongoc_collection_t *coll = mongoc_client_get_collection (client, app_db, app_coll);
   EXPECT (mongoc_collection_delete_many (coll, J ("{}"), NULL, NULL, &error), "clear: %s",
           error.message);
   const bson_t *two[] = {J ("{\"_id\": 1, \"n\": \"one\"}"), J ("{\"_id\": 2, \"n\": \"two\"}")};
   EXPECT (mongoc_collection_insert_many (coll, two, 2, NULL, NULL, &error), "insert_many: %s",
           error.message);
   mongoc_cursor_t *cursor =
      mongoc_collection_find_with_opts (coll, J ("{}"), J ("{\"sort\": {\"_id\": 1}}"), NULL);
   int n = drain (cursor, found, 4, "find");
   EXPECT (n == 2 && strcmp (str (found[0], "n"), "one") == 0 && strcmp (str (found[1], "n"), "two") == 0,
           "read back %d: %s", n, n > 0 ? S (found[0]) : "");
   EXPECT (mongoc_collection_update_one (coll, J ("{\"_id\": 1}"), J ("{\"$set\": {\"n\": \"uno\"}}"),
                                         NULL, &reply, &error),
           "update_one: %s", error.message);
   EXPECT (num (&reply, "modifiedCount") == 1, "update_one %s", S (&reply));
   bson_destroy (&reply);
   EXPECT (mongoc_collection_delete_one (coll, J ("{\"_id\": 2}"), NULL, &reply, &error),
           "delete_one: %s", error.message);
   EXPECT (num (&reply, "deletedCount") == 1, "delete_one %s", S (&reply));
   bson_destroy (&reply);
   n = drain (mongoc_collection_find_with_opts (coll, J ("{}"), NULL, NULL), found, 4, "find after");
   EXPECT (n == 1 && strcmp (str (found[0], "n"), "uno") == 0, "after update and delete %d: %s", n,
           n > 0 ? S (found[0]) : "");
   mongoc_collection_destroy (coll);
}

static void app_denied (mongoc_client_t *client)
{
   bson_error_t error;
   const bson_t *doc;
   mongoc_collection_t *coll = mongoc_client_get_collection (client, app_db, app_coll);
   mongoc_cursor_t *cursor = mongoc_collection_find_with_opts (coll, J ("{}"), NULL, NULL);
   EXPECT (!mongoc_cursor_next (cursor, &doc), "a read outside the ticket's scope succeeded");
   EXPECT (mongoc_cursor_error (cursor, &error) && error.code == 13, "denied read: code %u: %s", error.code,
           error.message);
   mongoc_cursor_destroy (cursor);
   EXPECT (!mongoc_collection_insert_one (coll, J ("{\"x\": 1}"), NULL, NULL, &error),
           "a write outside the ticket's scope succeeded");
   EXPECT (error.code == 13, "denied write: code %u: %s", error.code, error.message);
   mongoc_collection_destroy (coll);
}

static void login (mongoc_client_t *client)
{
   bson_error_t error;
   EXPECT (mongoc_client_command_simple (client, "admin", J ("{\"ping\": 1}"), NULL, NULL, &error),
           "ping: %s", error.message);
}

static void bad_login (mongoc_client_t *client)
{
   bson_error_t error;
   EXPECT (!mongoc_client_command_simple (client, "admin", J ("{\"ping\": 1}"), NULL, NULL, &error),
           "a wrong password was accepted");
   EXPECT (strstr (error.message, "uthentication failed") != NULL, "not an authentication failure: %s",
           error.message);
}

int main (int argc, char **argv)
{
   if (argc != 3) {
      fprintf (stderr, "usage: mongoc-check crud|seed|denied|login|bad-login URI\n"
                       "       mongoc-check app|app-denied DB.COLL (URI from MONGODB_URI)\n");
      return 2;
   }
   check_name = argv[1];
   const char *uri = argv[2];
   void (*run) (mongoc_client_t *) = NULL;
   if (strcmp (argv[1], "app") == 0 || strcmp (argv[1], "app-denied") == 0) {
      run = strcmp (argv[1], "app") == 0 ? app : app_denied;
      uri = getenv ("MONGODB_URI");
      EXPECT (uri && *uri, "MONGODB_URI is not set");
      char *ns = strdup (argv[2]);
      char *dot = strchr (ns, '.');
      EXPECT (dot && dot != ns && dot[1], "DB.COLL: %s", argv[2]);
      *dot = '\0';
      app_db = ns;
      app_coll = dot + 1;
   } else if (strcmp (argv[1], "crud") == 0) {
      run = crud;
   } else if (strcmp (argv[1], "seed") == 0) {
      run = seed;
   } else if (strcmp (argv[1], "denied") == 0) {
      run = denied;
   } else if (strcmp (argv[1], "login") == 0) {
      run = login;
   } else if (strcmp (argv[1], "bad-login") == 0) {
      run = bad_login;
   } else {
      fail ("unknown check");
   }
   mongoc_init ();
   mongoc_client_t *client = open_client (uri);
   run (client);
   mongoc_client_destroy (client);
   free_docs ();
   mongoc_cleanup ();
   printf ("ok\n");
   return 0;
}
