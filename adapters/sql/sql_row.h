/*
 * sql_row.h — a result row of an item statement → the item's JSON text,
 * written straight from the store's text forms (no json-c tree, no second
 * serialisation).  Shared by the PostgreSQL and MySQL adapters for
 * single-item answers (GET, and the row a write returns).
 *
 * Text forms that are already JSON are copied: integers, exact decimals
 * (numeric / DECIMAL keep their digits), documents (jsonb is valid by
 * construction; a MySQL/MariaDB JSON cell is checked, and one that is not
 * JSON is written as a string).  Booleans: PostgreSQL 't'/'f', MySQL
 * '1'/'0'.  Timestamps become RFC 3339 UTC the way the gateway writes them.
 * A SQL NULL leaves the field out (absent, as in every answer).
 */
#ifndef SQL_ROW_H
#define SQL_ROW_H

#include <stddef.h>
#include <stdint.h>

#include "adapters/sql/sql_build.h"

struct evbuffer;

/* vals[i] / lens[i]: the text of column i (NULL: SQL NULL), for the first
 * nvals columns of st.  *version gets the version column. */
void sql_row_write(struct evbuffer *out, const struct sql_stmt *st, const char *const *vals,
                   const unsigned long *lens, size_t nvals, int64_t *version);

/* A store's timestamp text ("2026-01-31 10:00:00.500000", PostgreSQL's
 * "2026-01-31 10:00:00.5+00" or "2026-01-31 10:00:00+00") →
 * "2026-01-31T10:00:00.500000Z" in buf (NUL terminated; always six
 * fraction digits); the length written.  The text is cut to fit buf; a
 * buf of fewer than 10 bytes gets "". */
size_t sql_ts_rfc3339(const char *v, size_t len, char *buf, size_t buflen);

#endif
