/* One PostgreSQL connection of a pool (pg_client.h), once handed out: a query sent with libpq's
 * asynchronous API (PQsendQueryParams, or a statement prepared and cached on the connection), its
 * end handed to a callback from the loop, an abandoned query cancelled on the server. Knows
 * nothing of Lua or of who waits. Results are libpq's PGresult. */
#ifndef WS_PG_CONN_H
#define WS_PG_CONN_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

struct ws_pg_conn;
struct lua_State;

/* A result made by a stand-in in place of libpq's PGresult (the testing kit answers queries
 * itself): rows it pushes onto a Lua state of the layer above, which this layer does not know. */
struct ws_pg_rows {
    /* Pushes the rows (an array of tables keyed by column name) and the affected row count onto
     * L and returns 2. [-0, +2, m] */
    int (*push)(struct ws_pg_rows *rows, struct lua_State *L);
    void (*free)(struct ws_pg_rows *rows);
    const char *status; /* the command tag, as PQcmdStatus gives it */
};

/* A query's end. res: its result (PGRES_TUPLES_OK or PGRES_COMMAND_OK), owned by the callback
 * (PQclear); or rows: a stand-in's, owned by the callback too (rows->free). Else err says why:
 * the server's message, with sqlstate its SQLSTATE code ("" when the failure is not the server's
 * answer: the connection was lost). Runs from the loop. */
typedef void (*ws_pg_result_fn)(void *ud, PGresult *res, struct ws_pg_rows *rows, const char *err,
                                const char *sqlstate);

/* Sends sql with n parameters (values[i] NULL: SQL NULL; lengths and formats as
 * PQsendQueryParams reads them: format 1 sends the bytes as they are) on c, which must be idle.
 * prepare: through a statement prepared on c, kept for the next time (at most 64 per
 * connection). The values are copied. done runs from the loop. Returns 0, or -1 with err filled
 * (c is busy or lost; nothing was sent). */
int ws_pg_conn_query(struct ws_pg_conn *c, const char *sql, int n, const char *const *values,
                     const int *lengths, const int *formats, bool prepare, ws_pg_result_fn done,
                     void *ud, char *err, size_t errlen);

/* Abandons c's query in flight: its callback does not run; the server is asked to cancel it
 * and its answer is drained before c takes another query (c stays the caller's). Returns true
 * when a query was in flight. */
bool ws_pg_conn_abandon(struct ws_pg_conn *c);

/* Whether c can take a query now (not cancelling, not lost). */
bool ws_pg_conn_ready(const struct ws_pg_conn *c);

#endif
