/*
 * sql_build.c — AST and item operations → parameterised SQL (see sql_build.h).
 */
#include "adapters/sql/sql_build.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/cf_config.h"
#include "model/md_query.h"

/* ---- buffers ------------------------------------------------------------------ */

void sql_stmt_init(struct sql_stmt *st, enum sql_dialect dialect)
{
    memset(st, 0, sizeof(*st));
    st->dialect = dialect;
    st->slot = -1;
    st->nstmts = 1;
    st->rows_at = 0;
    st->affected_at = -1;
}

void sql_stmt_free(struct sql_stmt *st)
{
    for (size_t i = 0; i < st->nparams; i++) {
        free(st->params[i]);
    }
    free(st->params);
    free(st->text);
    free(st->cols);
    memset(st, 0, sizeof(*st));
}

static void put(struct sql_stmt *st, const char *s, size_t n)
{
    if (st->len + n + 1 > st->cap) {
        size_t cap = st->cap ? st->cap : 1024;
        while (cap < st->len + n + 1) {
            cap *= 2;
        }
        char *t = realloc(st->text, cap);
        if (t == NULL) {
            st->oom = 1;
            return;
        }
        st->text = t;
        st->cap = cap;
    }
    memcpy(st->text + st->len, s, n);
    st->len += n;
    st->text[st->len] = '\0';
}

static void puts_(struct sql_stmt *st, const char *s)
{
    put(st, s, strlen(s));
}

/* printf-style append.  Formats straight into the statement's buffer
 * (grown to the length vsnprintf reports first): never cut short. */
static void __attribute__((format(printf, 2, 3))) putf(struct sql_stmt *st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) {
        st->oom = 1; /* an encoding error: refuse the statement rather than send part of it */
        return;
    }
    size_t len = st->len;
    put(st, "", 0); /* makes sure a buffer exists */
    if (st->oom) {
        return;
    }
    if (len + (size_t)n + 1 > st->cap) {
        size_t cap = st->cap;
        while (cap < len + (size_t)n + 1) {
            cap *= 2;
        }
        char *t = realloc(st->text, cap);
        if (t == NULL) {
            st->oom = 1;
            return;
        }
        st->text = t;
        st->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(st->text + len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    st->len = len + (size_t)n;
}

size_t sql_quote_ident(enum sql_dialect dialect, const char *name, char *out)
{
    char q = dialect == SQL_PG ? '"' : '`';
    size_t n = 0;
    out[n++] = q;
    for (const char *p = name; *p != '\0'; p++) {
        out[n++] = *p;
        if (*p == q) {
            out[n++] = q; /* the quote doubled */
        }
    }
    out[n++] = q;
    out[n] = '\0';
    return n;
}

/* A quoted identifier (from the config only). */
static void ident(struct sql_stmt *st, const char *name)
{
    char small[160];
    size_t need = 2 * strlen(name) + 3;
    char *q = need <= sizeof(small) ? small : malloc(need);
    if (q == NULL) {
        st->oom = 1;
        return;
    }
    put(st, q, sql_quote_ident(st->dialect, name, q));
    if (q != small) {
        free(q);
    }
}

/* Add a parameter (text, copied; NULL = SQL NULL) and write its placeholder. */
static void param(struct sql_stmt *st, const char *val, size_t len)
{
    if (st->nparams == st->pcap) {
        size_t cap = st->pcap ? st->pcap * 2 : 16;
        char **p = realloc(st->params, cap * sizeof(char *));
        if (p == NULL) {
            st->oom = 1;
            return;
        }
        st->params = p;
        st->pcap = cap;
    }
    st->params[st->nparams++] = val != NULL ? strndup(val, len) : NULL;
    if (st->dialect == SQL_PG) {
        putf(st, "$%zu", st->nparams);
    } else {
        puts_(st, "?");
    }
}

static void param_s(struct sql_stmt *st, const char *val)
{
    param(st, val, val != NULL ? strlen(val) : 0);
}

static void col(struct sql_stmt *st, enum sql_col_kind kind, const struct cf_field *f,
                const struct md_qaggregate *agg, int hidden)
{
    if (st->ncols == st->ccap) {
        size_t cap = st->ccap ? st->ccap * 2 : 16;
        struct sql_col *c = realloc(st->cols, cap * sizeof(*c));
        if (c == NULL) {
            st->oom = 1;
            return;
        }
        st->cols = c;
        st->ccap = cap;
    }
    st->cols[st->ncols++] = (struct sql_col){kind, f, agg, hidden};
}

static int finish(struct sql_stmt *st, char *err, size_t errlen)
{
    if (st->oom) {
        snprintf(err, errlen, "out of memory building SQL");
        return -1;
    }
    return 0;
}

/* ---- values -------------------------------------------------------------------- */

static int is_doc(const struct cf_field *f)
{
    return f->type == CF_T_OBJECT || f->type == CF_T_ARRAY || f->type == CF_T_JSON ||
           f->type == CF_T_COUNTERS;
}

/* A JSON value of field f as a parameter.  JSON null: SQL NULL for scalar
 * fields, the JSON text `null` for documents (`doc_null`). */
static void value_param(struct sql_stmt *st, const struct cf_field *f, struct json_object *v,
                        int doc_null)
{
    if (v == NULL && !(doc_null && is_doc(f))) {
        param(st, NULL, 0);
        return;
    }
    if (is_doc(f)) {
        param_s(st, v == NULL ? "null" : json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
        return;
    }
    switch (f->type) {
    case CF_T_BOOL:
        if (st->dialect == SQL_PG) {
            param_s(st, json_object_get_boolean(v) ? "true" : "false");
        } else {
            param_s(st, json_object_get_boolean(v) ? "1" : "0");
        }
        return;
    case CF_T_TIMESTAMP:
        if (st->dialect == SQL_MYSQL) {
            char buf[64];
            snprintf(buf, sizeof(buf), "%s", json_object_get_string(v));
            char *t = strchr(buf, 'T');
            if (t != NULL) {
                *t = ' ';
            }
            size_t n = strlen(buf);
            if (n > 0 && buf[n - 1] == 'Z') {
                buf[n - 1] = '\0';
            }
            param_s(st, buf);
            return;
        }
        param_s(st, json_object_get_string(v));
        return;
    case CF_T_STRING:
    case CF_T_ENUM:
        param(st, json_object_get_string(v), (size_t)json_object_get_string_len(v));
        return;
    case CF_T_INT:
        if (st->dialect == SQL_MYSQL) { /* a quoted number compares as a double */
            puts_(st, "CAST(");
            param_s(st, json_object_get_string(v));
            puts_(st, " AS SIGNED)");
            return;
        }
        param_s(st, json_object_get_string(v));
        return;
    case CF_T_DECIMAL:
        if (st->dialect == SQL_MYSQL) {
            /* the gateway allows at most 36 digits and the field's scale
             * (≤ 30): DECIMAL(65, max(29, scale)) holds every value exactly */
            puts_(st, "CAST(");
            param_s(st, json_object_get_string(v));
            putf(st, " AS DECIMAL(65,%d))", f->scale > 29 ? f->scale : 29);
            return;
        }
        param_s(st, json_object_get_string(v));
        return;
    default:
        param_s(st, json_object_get_string(v));
        return;
    }
}

/* LIMIT n: a parameter for PostgreSQL; for MySQL (which refuses a quoted
 * LIMIT) an integer formatted here, never client text. */
static void limit_clause(struct sql_stmt *st, int n)
{
    puts_(st, " LIMIT ");
    if (st->dialect == SQL_MYSQL) {
        putf(st, "%d", n);
        return;
    }
    char lim[24];
    snprintf(lim, sizeof(lim), "%d", n);
    param_s(st, lim);
}

/* A placeholder for a document parameter (PostgreSQL: jsonb). */
static void doc_param(struct sql_stmt *st, const char *json_text)
{
    param_s(st, json_text); /* PostgreSQL only: MariaDB uses JSON_EQUALS */
    puts_(st, "::jsonb");
}

/* ---- where --------------------------------------------------------------------- */

/* The expression of a leaf's operand: a column (paths go through
 * path_leaf below). */
static const char *cmp_sql(enum md_qop op);

static void operand(struct sql_stmt *st, const struct md_qnode *n, int as_text)
{
    (void)as_text;
    ident(st, n->field->name);
}

/* ---- paths into documents and arrays ------------------------------------------------
 *
 * A leaf on a dotted path (`shipping_address.city`, `items.product_id`) or
 * an in/nin on a whole array field matches when SOME value found at the
 * path matches (an array on the way matches through any element); ne, nin,
 * `eq null` and `exists false` are the negations (no value at the path
 * matches).  Comparisons are typed: a string matches only strings (code-point
 * order), a number only numbers (numerically), a boolean only booleans.
 *
 * PostgreSQL: jsonb_path_exists(col, $n::jsonpath, $m::jsonb) in lax mode,
 * which walks arrays on the path by itself; the jsonpath is a parameter
 * built from the validated segments (each a double-quoted jsonpath string,
 * `"` and `\` escaped) and the value travels in the vars document, never in
 * the path.  MariaDB: EXISTS over JSON_TABLE(col, '$[*]' for an array field
 * or '$', COLUMNS (v JSON PATH '$."a"."b"')), the paths parameters too;
 * arrays are walked at the array field (not inside object members). */

static int path_elems(const struct md_qnode *n)
{
    return n->npath > 0 ||
           (n->field->type == CF_T_ARRAY && (n->op == MD_QOP_IN || n->op == MD_QOP_NIN));
}

/* '$' followed by ."seg" for each segment (quotes and backslashes escaped:
 * the same syntax in jsonpath and MariaDB JSON paths).  malloc'd. */
static char *json_path_text(const struct md_qnode *n, size_t extra)
{
    size_t cap = 2 + extra;
    for (size_t i = 0; i < n->npath; i++) {
        cap += strlen(n->path[i]) * 2 + 3;
    }
    char *path = malloc(cap), *o = path;
    if (path == NULL) {
        return NULL;
    }
    *o++ = '$';
    for (size_t i = 0; i < n->npath; i++) {
        *o++ = '.';
        *o++ = '"';
        for (const char *p = n->path[i]; *p != '\0'; p++) {
            if (*p == '"' || *p == '\\') {
                *o++ = '\\';
            }
            *o++ = *p;
        }
        *o++ = '"';
    }
    *o = '\0';
    return path;
}

/* Is the leaf a negation of "some value at the path matches"? */
static int path_negated(const struct md_qnode *n)
{
    switch (n->op) {
    case MD_QOP_NE: /* ne null: some value is not null */
        return n->value != NULL;
    case MD_QOP_NIN:
        return 1;
    case MD_QOP_EQ:
        return n->value == NULL;
    case MD_QOP_EXISTS:
        return !json_object_get_boolean(n->value);
    default:
        return 0;
    }
}

/* The leaf asks only for a non-null value at the path (exists, eq/ne null). */
static int path_nonnull(const struct md_qnode *n)
{
    return n->op == MD_QOP_EXISTS ||
           ((n->op == MD_QOP_EQ || n->op == MD_QOP_NE) && n->value == NULL);
}

static void pg_path_leaf(struct sql_stmt *st, const struct md_qnode *n)
{
    const char *filter;
    switch (n->op) {
    case MD_QOP_GT:
        filter = " ? (@ > $v)";
        break;
    case MD_QOP_GTE:
        filter = " ? (@ >= $v)";
        break;
    case MD_QOP_LT:
        filter = " ? (@ < $v)";
        break;
    case MD_QOP_LTE:
        filter = " ? (@ <= $v)";
        break;
    case MD_QOP_PREFIX:
        filter = " ? (@ starts with $v)";
        break;
    default: /* eq ne in nin (lax mode: $v a list compares with each member) */
        filter = " ? (@ == $v)";
        break;
    }
    int nonnull = path_nonnull(n);
    if (nonnull) {
        filter = " ? (@ != null)";
    }
    char *path = json_path_text(n, strlen(filter));
    if (path == NULL) {
        st->oom = 1;
        return;
    }
    strcat(path, filter);
    puts_(st, path_negated(n) ? "NOT COALESCE(jsonb_path_exists(" : "COALESCE(jsonb_path_exists(");
    ident(st, n->field->name);
    puts_(st, ", ");
    param_s(st, path);
    puts_(st, "::jsonpath");
    free(path);
    if (!nonnull) {
        struct json_object *vars = json_object_new_object();
        json_object_object_add(vars, "v", json_object_get(n->value));
        puts_(st, ", ");
        param_s(st, json_object_to_json_string_ext(vars, JSON_C_TO_STRING_PLAIN));
        puts_(st, "::jsonb");
        json_object_put(vars);
    }
    puts_(st, "), false)");
}

#define MY_PV "`_pgjt`.`_pgv`" /* the value found at the path, as JSON */

/* MariaDB: `v` (a scalar) compared with the JSON value MY_PV, typed. */
static void my_cmp(struct sql_stmt *st, struct json_object *v, enum md_qop op)
{
    const char *cmp = op == MD_QOP_PREFIX ? " LIKE " : cmp_sql(op);
    switch (json_object_get_type(v)) {
    case json_type_string:
        puts_(st, "(JSON_TYPE(" MY_PV ") = 'STRING' AND CAST(JSON_UNQUOTE(" MY_PV ") AS BINARY)");
        puts_(st, cmp);
        if (op == MD_QOP_PREFIX) {
            const char *s = json_object_get_string(v);
            size_t len = (size_t)json_object_get_string_len(v);
            char *buf = malloc(len * 2 + 2), *o = buf;
            if (buf == NULL) {
                st->oom = 1;
                return;
            }
            for (size_t i = 0; i < len; i++) {
                if (s[i] == '%' || s[i] == '_' || s[i] == '\\') {
                    *o++ = '\\';
                }
                *o++ = s[i];
            }
            *o++ = '%';
            puts_(st, "CAST(");
            param(st, buf, (size_t)(o - buf));
            puts_(st, " AS BINARY) ESCAPE '\\\\')");
            free(buf);
            return;
        }
        puts_(st, "CAST(");
        param(st, json_object_get_string(v), (size_t)json_object_get_string_len(v));
        puts_(st, " AS BINARY))");
        return;
    case json_type_int:
    case json_type_double:
        /* the number's own text (json-c keeps a parsed number's digits) */
        puts_(st, "(JSON_TYPE(" MY_PV ") IN ('INTEGER', 'UNSIGNED INTEGER', 'DOUBLE', 'DECIMAL') "
                  "AND CAST(" MY_PV " AS DECIMAL(65,30))");
        puts_(st, cmp);
        puts_(st, "CAST(");
        param_s(st, json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
        puts_(st, " AS DECIMAL(65,30)))");
        return;
    case json_type_boolean:
        puts_(st, "(JSON_TYPE(" MY_PV ") = 'BOOLEAN' AND " MY_PV);
        puts_(st, cmp);
        puts_(st, json_object_get_boolean(v) ? "'true')" : "'false')");
        return;
    default: /* not reached: the parser admits scalars only */
        puts_(st, "1=0");
        return;
    }
}

static void my_path_leaf(struct sql_stmt *st, const struct md_qnode *n)
{
    char *path = json_path_text(n, 0);
    if (path == NULL) {
        st->oom = 1;
        return;
    }
    puts_(st, path_negated(n) ? "NOT EXISTS (SELECT 1 FROM JSON_TABLE("
                              : "EXISTS (SELECT 1 FROM "
                                "JSON_TABLE(");
    ident(st, n->field->name);
    puts_(st, ", ");
    param_s(st, n->field->type == CF_T_ARRAY ? "$[*]" : "$");
    puts_(st, " COLUMNS (`_pgv` JSON PATH ");
    param_s(st, path);
    free(path);
    puts_(st, ")) AS `_pgjt` WHERE ");
    if (path_nonnull(n)) {
        puts_(st, MY_PV " IS NOT NULL AND JSON_TYPE(" MY_PV ") <> 'NULL')");
        return;
    }
    if (n->op == MD_QOP_IN || n->op == MD_QOP_NIN) {
        size_t len = json_object_array_length(n->value);
        puts_(st, "(");
        for (size_t i = 0; i < len; i++) {
            if (i > 0) {
                puts_(st, " OR ");
            }
            my_cmp(st, json_object_array_get_idx(n->value, i), MD_QOP_EQ);
        }
        puts_(st, "))");
        return;
    }
    my_cmp(st, n->value, n->op == MD_QOP_NE ? MD_QOP_EQ : n->op);
    puts_(st, ")");
}

static void path_leaf(struct sql_stmt *st, const struct md_qnode *n)
{
    if (st->dialect == SQL_PG) {
        pg_path_leaf(st, n);
    } else {
        my_path_leaf(st, n);
    }
}

static const char *cmp_sql(enum md_qop op)
{
    switch (op) {
    case MD_QOP_GT:
        return " > ";
    case MD_QOP_GTE:
        return " >= ";
    case MD_QOP_LT:
        return " < ";
    case MD_QOP_LTE:
        return " <= ";
    default:
        return " = ";
    }
}

/* A leaf value on the right-hand side of a comparison. */
static void rhs(struct sql_stmt *st, const struct md_qnode *n, struct json_object *v)
{
    if (n->npath > 0 || is_doc(n->field)) {
        doc_param(st, json_object_to_json_string_ext(v, JSON_C_TO_STRING_PLAIN));
    } else {
        value_param(st, n->field, v, 0);
    }
}

static void like_prefix(struct sql_stmt *st, const char *s, size_t len)
{
    char *buf = malloc(len * 2 + 2), *o = buf;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%' || s[i] == '_' || s[i] == '\\') {
            *o++ = '\\';
        }
        *o++ = s[i];
    }
    *o++ = '%';
    param(st, buf, (size_t)(o - buf));
    free(buf);
    puts_(st, st->dialect == SQL_PG ? " ESCAPE '\\'" : " ESCAPE '\\\\'");
}

static void where_node(struct sql_stmt *st, const struct md_qnode *n)
{
    if (n->op != MD_QOP_AND && n->op != MD_QOP_OR && path_elems(n)) {
        path_leaf(st, n);
        return;
    }
    switch (n->op) {
    case MD_QOP_AND:
    case MD_QOP_OR:
        if (n->nkids == 0) { /* `{}` or `"and": []`: true; `"or": []`: false */
            puts_(st, n->op == MD_QOP_AND ? "1=1" : "1=0");
            return;
        }
        puts_(st, "(");
        for (size_t i = 0; i < n->nkids; i++) {
            if (i > 0) {
                puts_(st, n->op == MD_QOP_AND ? " AND " : " OR ");
            }
            where_node(st, n->kids[i]);
        }
        puts_(st, ")");
        return;
    case MD_QOP_EXISTS:
        operand(st, n, 0);
        puts_(st, json_object_get_boolean(n->value) ? " IS NOT NULL" : " IS NULL");
        return;
    case MD_QOP_PREFIX:
        operand(st, n, 1);
        puts_(st, " LIKE ");
        like_prefix(st, json_object_get_string(n->value),
                    (size_t)json_object_get_string_len(n->value));
        return;
    case MD_QOP_EQ:
    case MD_QOP_NE: {
        int ne = n->op == MD_QOP_NE;
        if (n->value == NULL) {
            operand(st, n, 0);
            puts_(st, ne ? " IS NOT NULL" : " IS NULL");
            return;
        }
        if (st->dialect == SQL_MYSQL && is_doc(n->field)) {
            /* a whole document: MariaDB compares JSON values with JSON_EQUALS
             * (object members in any order); NULL columns are "not equal" */
            puts_(st, "COALESCE(JSON_EQUALS(");
            operand(st, n, 0);
            puts_(st, ", ");
            param_s(st, json_object_to_json_string_ext(n->value, JSON_C_TO_STRING_PLAIN));
            puts_(st, ne ? "), 0) = 0" : "), 0) = 1");
            return;
        }
        if (!ne) {
            operand(st, n, 0);
            puts_(st, " = ");
            rhs(st, n, n->value);
            return;
        }
        if (st->dialect == SQL_PG) {
            operand(st, n, 0);
            puts_(st, " IS DISTINCT FROM ");
            rhs(st, n, n->value);
        } else {
            puts_(st, "NOT (");
            operand(st, n, 0);
            puts_(st, " <=> ");
            rhs(st, n, n->value);
            puts_(st, ")");
        }
        return;
    }
    case MD_QOP_IN:
    case MD_QOP_NIN: {
        int nin = n->op == MD_QOP_NIN;
        if (nin) {
            puts_(st, "(");
            operand(st, n, 0);
            puts_(st, " IS NULL OR ");
        }
        operand(st, n, 0);
        puts_(st, nin ? " NOT IN (" : " IN (");
        size_t len = json_object_array_length(n->value);
        for (size_t i = 0; i < len; i++) {
            if (i > 0) {
                puts_(st, ", ");
            }
            rhs(st, n, json_object_array_get_idx(n->value, i));
        }
        puts_(st, nin ? "))" : ")");
        return;
    }
    default: /* gt gte lt lte */
        operand(st, n, 0);
        puts_(st, cmp_sql(n->op));
        rhs(st, n, n->value);
        return;
    }
}

/* ---- keyset bound ----------------------------------------------------------------- */

static int nullable(const struct cf_domain *d, const struct cf_field *f)
{
    return !f->required && strcmp(f->name, d->key) != 0;
}

static void keyset(struct sql_stmt *st, const struct cf_domain *d, const struct md_query *q)
{
    int same = 1, nulls = 0;
    for (size_t i = 0; i < q->norder; i++) {
        same &= q->order[i].desc == q->order[0].desc;
        nulls |= nullable(d, q->order[i].field) || json_object_array_get_idx(q->after, i) == NULL;
    }
    if (same && !nulls) { /* row-value comparison: one index range */
        puts_(st, "(");
        for (size_t i = 0; i < q->norder; i++) {
            puts_(st, i ? ", " : "");
            ident(st, q->order[i].field->name);
        }
        puts_(st, q->order[0].desc ? ") < (" : ") > (");
        for (size_t i = 0; i < q->norder; i++) {
            puts_(st, i ? ", " : "");
            value_param(st, q->order[i].field, json_object_array_get_idx(q->after, i), 0);
        }
        puts_(st, ")");
        return;
    }
    /* OR-chain: (a > va) OR (a = va AND b > vb) OR …, NULL being the largest */
    puts_(st, "(");
    int terms = 0;
    for (size_t i = 0; i < q->norder; i++) {
        const struct cf_field *fi = q->order[i].field;
        struct json_object *vi = json_object_array_get_idx(q->after, i);
        if (!q->order[i].desc && vi == NULL) {
            continue; /* nothing is after NULL ascending */
        }
        puts_(st, terms++ ? " OR (" : "(");
        for (size_t j = 0; j < i; j++) {
            const struct cf_field *fj = q->order[j].field;
            struct json_object *vj = json_object_array_get_idx(q->after, j);
            ident(st, fj->name);
            if (vj == NULL) {
                puts_(st, " IS NULL AND ");
            } else {
                puts_(st, " = ");
                value_param(st, fj, vj, 0);
                puts_(st, " AND ");
            }
        }
        if (q->order[i].desc) {
            ident(st, fi->name);
            if (vi == NULL) {
                puts_(st, " IS NOT NULL");
            } else {
                puts_(st, " < ");
                value_param(st, fi, vi, 0);
            }
        } else if (nullable(d, fi)) {
            puts_(st, "(");
            ident(st, fi->name);
            puts_(st, " > ");
            value_param(st, fi, vi, 0);
            puts_(st, " OR ");
            ident(st, fi->name);
            puts_(st, " IS NULL)");
        } else {
            ident(st, fi->name);
            puts_(st, " > ");
            value_param(st, fi, vi, 0);
        }
        puts_(st, ")");
    }
    if (terms == 0) {
        puts_(st, "1 = 0");
    }
    puts_(st, ")");
}

static void order_item(struct sql_stmt *st, const struct cf_field *f, int desc)
{
    if (st->dialect == SQL_PG) {
        ident(st, f->name);
        puts_(st, desc ? " DESC NULLS FIRST" : " ASC NULLS LAST");
    } else {
        ident(st, f->name);
        puts_(st, desc ? " IS NULL DESC, " : " IS NULL, ");
        ident(st, f->name);
        puts_(st, desc ? " DESC" : " ASC");
    }
}

/* ---- selects ----------------------------------------------------------------------- */

static void select_item_cols(struct sql_stmt *st, const struct cf_domain *d)
{
    for (size_t i = 0; i < d->nfields; i++) {
        puts_(st, i ? ", " : "");
        ident(st, d->fields[i].name);
        col(st, SQL_COL_FIELD, &d->fields[i], NULL, 0);
    }
    puts_(st, ", ");
    ident(st, "version");
    col(st, SQL_COL_VERSION, NULL, NULL, 0);
}

static void where_key(struct sql_stmt *st, const struct cf_domain *d, const char *key)
{
    puts_(st, " WHERE ");
    ident(st, d->key);
    puts_(st, " = ");
    param_s(st, key);
}

static void and_version(struct sql_stmt *st, int64_t if_match)
{
    if (if_match >= 0) {
        char v[24];
        snprintf(v, sizeof(v), "%lld", (long long)if_match);
        puts_(st, " AND ");
        ident(st, "version");
        puts_(st, " = ");
        param_s(st, v);
    }
}

int sql_build_get(struct sql_stmt *st, const struct cf_domain *d, const char *key, char *err,
                  size_t errlen)
{
    puts_(st, "SELECT ");
    select_item_cols(st, d);
    puts_(st, " FROM ");
    ident(st, d->table);
    where_key(st, d, key);
    return finish(st, err, errlen);
}

int sql_build_version(struct sql_stmt *st, const struct cf_domain *d, const char *key, char *err,
                      size_t errlen)
{
    puts_(st, "SELECT ");
    ident(st, "version");
    col(st, SQL_COL_VERSION, NULL, NULL, 0);
    puts_(st, " FROM ");
    ident(st, d->table);
    where_key(st, d, key);
    return finish(st, err, errlen);
}

/* `[WHERE|AND] (_slot IS NULL OR _slot NOT IN (…))` for st->excl_slots. */
static void excl_clause(struct sql_stmt *st, const struct cf_domain *d, int *w)
{
    if (st->nexcl <= 0 || d->shard_key == NULL) {
        return;
    }
    puts_(st, *w ? " AND (" : " WHERE (");
    *w = 1;
    ident(st, "_slot");
    puts_(st, " IS NULL OR ");
    ident(st, "_slot");
    puts_(st, " NOT IN (");
    for (int i = 0; i < st->nexcl; i++) {
        putf(st, "%s%d", i ? ", " : "", (int)st->excl_slots[i]);
    }
    puts_(st, "))");
}

int sql_build_query(struct sql_stmt *st, const struct cf_domain *d, const struct md_query *q,
                    char *err, size_t errlen)
{
    const struct cf_field *kf = cf_field_find(d, d->key);
    puts_(st, "SELECT ");
    size_t n = 0;
    if (q->nfields == 0) {
        select_item_cols(st, d);
    } else {
        int have_key = 0;
        for (size_t i = 0; i < q->nfields; i++) {
            puts_(st, n++ ? ", " : "");
            ident(st, q->fields[i]->name);
            col(st, SQL_COL_FIELD, q->fields[i], NULL, 0);
            have_key |= q->fields[i] == kf;
        }
        if (!have_key) {
            puts_(st, ", ");
            ident(st, kf->name);
            col(st, SQL_COL_FIELD, kf, NULL, 0);
        }
        puts_(st, ", ");
        ident(st, "version");
        col(st, SQL_COL_VERSION, NULL, NULL, 0);
        /* sort columns the projection left out: needed for the next cursor */
        for (size_t i = 0; i < q->norder; i++) {
            int found = q->order[i].field == kf;
            for (size_t j = 0; !found && j < q->nfields; j++) {
                found = q->fields[j] == q->order[i].field;
            }
            if (!found) {
                puts_(st, ", ");
                ident(st, q->order[i].field->name);
                col(st, SQL_COL_FIELD, q->order[i].field, NULL, 1);
            }
        }
    }
    puts_(st, " FROM ");
    ident(st, d->table);
    int w = 0;
    if (q->where != NULL) {
        puts_(st, " WHERE ");
        where_node(st, q->where);
        w = 1;
    }
    excl_clause(st, d, &w);
    if (q->after != NULL) {
        puts_(st, w ? " AND " : " WHERE ");
        keyset(st, d, q);
    }
    puts_(st, " ORDER BY ");
    for (size_t i = 0; i < q->norder; i++) {
        puts_(st, i ? ", " : "");
        order_item(st, q->order[i].field, q->order[i].desc);
    }
    limit_clause(st, q->limit + 1);
    return finish(st, err, errlen);
}

int sql_build_aggregate(struct sql_stmt *st, const struct cf_domain *d, const struct md_query *q,
                        char *err, size_t errlen)
{
    static const char *const fns[] = {"COUNT", "SUM", "MIN", "MAX", "AVG"};
    for (size_t i = 0; i < q->ngroup; i++) {
        if (strcmp(q->group_names[i], q->group_by[i]->name) != 0) { /* the gateway refuses it */
            snprintf(err, errlen, "group_by '%.128s': SQL stores group by top-level fields only",
                     q->group_names[i]);
            return -1;
        }
    }
    puts_(st, "SELECT ");
    size_t n = 0;
    for (size_t i = 0; i < q->ngroup; i++) {
        puts_(st, n++ ? ", " : "");
        ident(st, q->group_by[i]->name);
        col(st, SQL_COL_FIELD, q->group_by[i], NULL, 0);
    }
    for (size_t i = 0; i < q->naggs; i++) {
        const struct md_qaggregate *a = &q->aggs[i];
        puts_(st, n++ ? ", " : "");
        puts_(st, fns[a->fn]);
        puts_(st, "(");
        if (a->field == NULL) {
            puts_(st, "*");
        } else {
            ident(st, a->field->name);
        }
        puts_(st, ")");
        col(st, SQL_COL_AGG, a->field, a, 0);
    }
    puts_(st, " FROM ");
    ident(st, d->table);
    int w = 0;
    if (q->where != NULL) {
        puts_(st, " WHERE ");
        where_node(st, q->where);
        w = 1;
    }
    excl_clause(st, d, &w);
    if (q->ngroup > 0) {
        puts_(st, " GROUP BY ");
        for (size_t i = 0; i < q->ngroup; i++) {
            puts_(st, i ? ", " : "");
            ident(st, q->group_by[i]->name);
        }
        puts_(st, " ORDER BY ");
        for (size_t i = 0; i < q->ngroup; i++) {
            puts_(st, i ? ", " : "");
            order_item(st, q->group_by[i], 0);
        }
        limit_clause(st, q->limit);
    }
    return finish(st, err, errlen);
}

/* ---- writes ------------------------------------------------------------------------ */

static int sharded(const struct cf_domain *d)
{
    return d->shard_key != NULL;
}

/* The row's slot (st->slot) as a value; NULL when unknown. */
static void slot_value(struct sql_stmt *st)
{
    if (st->slot < 0) {
        puts_(st, "NULL");
        return;
    }
    char v[16];
    snprintf(v, sizeof(v), "%d", (int)st->slot);
    param_s(st, v);
}

/* ---- the fence (sql_build.h) ----------------------------------------------------------- */

/* An insert / upsert of st->slot is fenced (the values go in as a SELECT). */
static int fence_insert(const struct sql_stmt *st, const struct cf_domain *d)
{
    return st->fence && sharded(d) && st->slot >= 0;
}

void sql_slots_table(const char *table, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s%s", SQL_SLOTS_PREFIX, table);
}

/* "EXISTS (SELECT 1 FROM _polygate_slots_<table> WHERE slot = " … — the
 * caller writes the slot, then fence_lock(). */
static void fence_exists(struct sql_stmt *st, const struct cf_domain *d, int negated)
{
    char name[sizeof(SQL_SLOTS_PREFIX) + 64];
    sql_slots_table(d->table, name, sizeof(name)); /* tables: at most 40 bytes (check_domain) */
    puts_(st, negated ? "NOT EXISTS (SELECT 1 FROM " : "EXISTS (SELECT 1 FROM ");
    ident(st, name);
    puts_(st, " WHERE ");
    ident(st, "slot");
    puts_(st, " = ");
}

/* The shared lock on the slot's row that the mover's revoke waits for. */
static void fence_lock(struct sql_stmt *st)
{
    puts_(st, st->dialect == SQL_PG ? " FOR SHARE)" : " LOCK IN SHARE MODE)");
}

/* The end of a fenced INSERT … SELECT <values>: its WHERE.  slot_param: the
 * number of the slot's parameter (PostgreSQL: the same $n as the _slot
 * value, so one statement shape serves every slot); MySQL writes the slot as
 * an integer, the builder's own number. */
static void fence_insert_where(struct sql_stmt *st, const struct cf_domain *d, size_t slot_param)
{
    puts_(st, st->dialect == SQL_MYSQL ? " FROM DUAL WHERE " : " WHERE ");
    fence_exists(st, d, 0);
    if (st->dialect == SQL_PG) {
        putf(st, "$%zu", slot_param);
    } else {
        putf(st, "%d", (int)st->slot);
    }
    fence_lock(st);
}

/* <table>._slot */
static void row_slot(struct sql_stmt *st, const struct cf_domain *d)
{
    ident(st, d->table);
    puts_(st, ".");
    ident(st, "_slot");
}

/* An UPDATE / DELETE of one row: " AND (t._slot IS NULL OR EXISTS (…))" —
 * the row's own slot, so a write by id alone is fenced too; a row without a
 * slot (written before the domain was sharded) is never moved. */
static void fence_where(struct sql_stmt *st, const struct cf_domain *d)
{
    if (!st->fence || !sharded(d)) {
        return;
    }
    puts_(st, " AND (");
    row_slot(st, d);
    puts_(st, " IS NULL OR ");
    fence_exists(st, d, 0);
    row_slot(st, d);
    fence_lock(st);
    puts_(st, ")");
}

int sql_build_fence_probe(struct sql_stmt *st, const struct cf_domain *d, const char *key,
                          char *err, size_t errlen)
{
    if (st->slot >= 0) {
        char v[16];
        snprintf(v, sizeof(v), "%d", (int)st->slot);
        puts_(st, "SELECT p.s FROM (SELECT ");
        if (st->dialect == SQL_PG) { /* a parameter: one prepared shape for every slot */
            param_s(st, v);
            puts_(st, "::integer");
        } else {
            puts_(st, v);
        }
        puts_(st, " AS s) p WHERE ");
        fence_exists(st, d, 1);
        puts_(st, "p.s)");
        return finish(st, err, errlen);
    }
    puts_(st, "SELECT ");
    row_slot(st, d);
    puts_(st, " FROM ");
    ident(st, d->table);
    where_key(st, d, key);
    puts_(st, " AND ");
    row_slot(st, d);
    puts_(st, " IS NOT NULL AND ");
    fence_exists(st, d, 1);
    row_slot(st, d);
    puts_(st, ")");
    return finish(st, err, errlen);
}

/* PostgreSQL: the item comes back from the write itself. */
static void returning(struct sql_stmt *st, const struct cf_domain *d)
{
    puts_(st, " RETURNING ");
    select_item_cols(st, d);
}

/* MySQL: the end of a write script — re-read the item in the same
 * transaction (the write holds the row lock until COMMIT). */
static void my_reread(struct sql_stmt *st, const struct cf_domain *d, const char *key)
{
    puts_(st, "; SELECT ");
    select_item_cols(st, d);
    puts_(st, " FROM ");
    ident(st, d->table);
    where_key(st, d, key);
    puts_(st, "; COMMIT");
    st->nstmts = 4;
    st->affected_at = 1;
    st->rows_at = 2;
    st->txn = 1;
}

/* `f = v, …` of a whole-item replace (every non-key field; absent → NULL;
 * auto-created timestamps keep their first value). */
static void replace_sets(struct sql_stmt *st, const struct cf_domain *d, struct json_object *item)
{
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        if (strcmp(f->name, d->key) == 0) {
            continue;
        }
        struct json_object *v = NULL;
        int has = json_object_object_get_ex(item, f->name, &v);
        ident(st, f->name);
        puts_(st, " = ");
        if (f->auto_created) {
            puts_(st, "COALESCE(");
            ident(st, f->name);
            puts_(st, ", ");
            value_param(st, f, has ? v : NULL, has);
            puts_(st, ")");
        } else if (has) {
            value_param(st, f, v, 1);
        } else {
            puts_(st, "NULL");
        }
        puts_(st, ", ");
    }
    if (sharded(d)) { /* an unknown slot keeps the stored one */
        ident(st, "_slot");
        puts_(st, " = COALESCE(");
        slot_value(st);
        puts_(st, ", ");
        ident(st, "_slot");
        puts_(st, "), ");
    }
}

int sql_build_insert(struct sql_stmt *st, const struct cf_domain *d, struct json_object *item,
                     char *err, size_t errlen)
{
    struct json_object *kv = NULL;
    int my = st->dialect == SQL_MYSQL;
    if (my && (!json_object_object_get_ex(item, d->key, &kv) ||
               !json_object_is_type(kv, json_type_string))) {
        snprintf(err, errlen, "the item has no key '%s'", d->key);
        return -1;
    }
    puts_(st, my ? "START TRANSACTION; INSERT INTO " : "INSERT INTO ");
    ident(st, d->table);
    puts_(st, " (");
    for (size_t i = 0; i < d->nfields; i++) {
        if (json_object_object_get_ex(item, d->fields[i].name, NULL)) {
            ident(st, d->fields[i].name);
            puts_(st, ", ");
        }
    }
    ident(st, "version");
    if (sharded(d)) {
        puts_(st, ", ");
        ident(st, "_slot");
    }
    int fenced = fence_insert(st, d);
    puts_(st, fenced ? ") SELECT " : ") VALUES (");
    for (size_t i = 0; i < d->nfields; i++) {
        struct json_object *v;
        if (json_object_object_get_ex(item, d->fields[i].name, &v)) {
            value_param(st, &d->fields[i], v, 1);
            puts_(st, ", ");
        }
    }
    puts_(st, "1");
    if (sharded(d)) {
        puts_(st, ", ");
        slot_value(st);
    }
    if (fenced) {
        fence_insert_where(st, d, st->nparams);
    } else {
        puts_(st, ")");
    }
    if (my) {
        my_reread(st, d, json_object_get_string(kv));
    } else {
        returning(st, d);
    }
    return finish(st, err, errlen);
}

/* MySQL upsert: INSERT … ON DUPLICATE KEY UPDATE.  Every assignment is
 * guarded by `key = VALUES(key)`: when the duplicate is another unique
 * column of ANOTHER row, nothing changes (0 affected rows → 409) instead of
 * overwriting that row.  Affected rows: 1 inserted, 2 updated. */
static int my_upsert(struct sql_stmt *st, const struct cf_domain *d, const char *key,
                     struct json_object *item, char *err, size_t errlen)
{
    puts_(st, "START TRANSACTION; INSERT INTO ");
    ident(st, d->table);
    puts_(st, " (");
    for (size_t i = 0; i < d->nfields; i++) {
        ident(st, d->fields[i].name);
        puts_(st, ", ");
    }
    ident(st, "version");
    if (sharded(d)) {
        puts_(st, ", ");
        ident(st, "_slot");
    }
    int fenced = fence_insert(st, d);
    puts_(st, fenced ? ") SELECT " : ") VALUES (");
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        struct json_object *v = NULL;
        if (strcmp(f->name, d->key) == 0) {
            param_s(st, key);
        } else if (json_object_object_get_ex(item, f->name, &v)) {
            value_param(st, f, v, 1);
        } else {
            puts_(st, "NULL");
        }
        puts_(st, ", ");
    }
    puts_(st, "1");
    if (sharded(d)) {
        puts_(st, ", ");
        slot_value(st);
    }
    if (fenced) {
        fence_insert_where(st, d, st->nparams);
        puts_(st, " ON DUPLICATE KEY UPDATE ");
    } else {
        puts_(st, ") ON DUPLICATE KEY UPDATE ");
    }
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        if (strcmp(f->name, d->key) == 0) {
            continue;
        }
        ident(st, f->name);
        puts_(st, " = IF(");
        ident(st, d->key);
        puts_(st, " = VALUES(");
        ident(st, d->key);
        puts_(st, "), ");
        if (f->auto_created) {
            puts_(st, "COALESCE(");
            ident(st, f->name);
            puts_(st, ", VALUES(");
            ident(st, f->name);
            puts_(st, "))");
        } else {
            puts_(st, "VALUES(");
            ident(st, f->name);
            puts_(st, ")");
        }
        puts_(st, ", ");
        ident(st, f->name);
        puts_(st, "), ");
    }
    if (sharded(d)) {
        ident(st, "_slot");
        puts_(st, " = IF(");
        ident(st, d->key);
        puts_(st, " = VALUES(");
        ident(st, d->key);
        puts_(st, "), COALESCE(VALUES(");
        ident(st, "_slot");
        puts_(st, "), ");
        ident(st, "_slot");
        puts_(st, "), ");
        ident(st, "_slot");
        puts_(st, "), ");
    }
    ident(st, "version");
    puts_(st, " = IF(");
    ident(st, d->key);
    puts_(st, " = VALUES(");
    ident(st, d->key);
    puts_(st, "), ");
    ident(st, "version");
    puts_(st, " + 1, ");
    ident(st, "version");
    puts_(st, ")");
    my_reread(st, d, key);
    return finish(st, err, errlen);
}

int sql_build_put(struct sql_stmt *st, const struct cf_domain *d, const char *key,
                  struct json_object *item, int64_t if_match, char *err, size_t errlen)
{
    int my = st->dialect == SQL_MYSQL;
    if (if_match >= 0) { /* replace an existing row at that version, or nothing */
        puts_(st, my ? "START TRANSACTION; UPDATE " : "UPDATE ");
        ident(st, d->table);
        puts_(st, " SET ");
        replace_sets(st, d, item);
        ident(st, "version");
        puts_(st, " = ");
        ident(st, "version");
        puts_(st, " + 1");
        where_key(st, d, key);
        and_version(st, if_match);
        fence_where(st, d);
        if (my) {
            my_reread(st, d, key);
        } else {
            returning(st, d);
        }
        return finish(st, err, errlen);
    }
    if (my) {
        return my_upsert(st, d, key, item, err, errlen);
    }
    puts_(st, "INSERT INTO ");
    ident(st, d->table);
    puts_(st, " AS t (");
    for (size_t i = 0; i < d->nfields; i++) {
        ident(st, d->fields[i].name);
        puts_(st, ", ");
    }
    ident(st, "version");
    if (sharded(d)) {
        puts_(st, ", ");
        ident(st, "_slot");
    }
    int fenced = fence_insert(st, d);
    puts_(st, fenced ? ") SELECT " : ") VALUES (");
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        struct json_object *v = NULL;
        if (strcmp(f->name, d->key) == 0) {
            param_s(st, key);
        } else if (json_object_object_get_ex(item, f->name, &v)) {
            value_param(st, f, v, 1);
        } else {
            puts_(st, "NULL");
        }
        puts_(st, ", ");
    }
    puts_(st, "1");
    if (sharded(d)) {
        puts_(st, ", ");
        slot_value(st);
    }
    if (fenced) { /* the WHERE also keeps ON CONFLICT from reading as a JOIN's ON */
        fence_insert_where(st, d, st->nparams);
        puts_(st, " ON CONFLICT (");
    } else {
        puts_(st, ") ON CONFLICT (");
    }
    ident(st, d->key);
    puts_(st, ") DO UPDATE SET ");
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        if (strcmp(f->name, d->key) == 0) {
            continue;
        }
        ident(st, f->name);
        if (f->auto_created) {
            puts_(st, " = COALESCE(t.");
            ident(st, f->name);
            puts_(st, ", EXCLUDED.");
        } else {
            puts_(st, " = EXCLUDED.");
        }
        ident(st, f->name);
        puts_(st, f->auto_created ? "), " : ", ");
    }
    if (sharded(d)) {
        ident(st, "_slot");
        puts_(st, " = COALESCE(EXCLUDED.");
        ident(st, "_slot");
        puts_(st, ", t.");
        ident(st, "_slot");
        puts_(st, "), ");
    }
    ident(st, "version");
    puts_(st, " = t.");
    ident(st, "version");
    puts_(st, " + 1");
    returning(st, d);
    puts_(st, ", (xmax = 0)");
    col(st, SQL_COL_CREATED, NULL, NULL, 1);
    return finish(st, err, errlen);
}

int sql_build_patch(struct sql_stmt *st, const struct cf_domain *d, const char *key,
                    struct json_object *patch, int64_t if_match, char *err, size_t errlen)
{
    int my = st->dialect == SQL_MYSQL;
    puts_(st, my ? "START TRANSACTION; UPDATE " : "UPDATE ");
    ident(st, d->table);
    puts_(st, " SET ");
    struct json_object *ops;
    if (json_object_object_get_ex(patch, "set", &ops)) {
        json_object_object_foreach(ops, k, v)
        {
            const struct cf_field *f = cf_field_find(d, k);
            if (f == NULL) {
                snprintf(err, errlen, "unknown field '%s'", k);
                return -1;
            }
            ident(st, f->name);
            puts_(st, " = ");
            value_param(st, f, v, 1);
            puts_(st, ", ");
        }
    }
    if (json_object_object_get_ex(patch, "inc", &ops)) {
        json_object_object_foreach(ops, k, v)
        {
            const struct cf_field *f = cf_field_find(d, k);
            if (f == NULL || (f->type != CF_T_INT && f->type != CF_T_DECIMAL)) {
                snprintf(err, errlen, "field '%s' cannot be incremented", k);
                return -1;
            }
            ident(st, f->name);
            puts_(st, " = COALESCE(");
            ident(st, f->name);
            puts_(st, ", 0) + ");
            value_param(st, f, v, 0); /* MySQL: cast by value_param */
            if (my) {
                puts_(st, ", ");
            } else {
                puts_(st, f->type == CF_T_INT ? "::bigint, " : "::numeric, ");
            }
        }
    }
    if (json_object_object_get_ex(patch, "unset", &ops)) {
        for (size_t i = 0; i < json_object_array_length(ops); i++) {
            const struct cf_field *f =
                cf_field_find(d, json_object_get_string(json_object_array_get_idx(ops, i)));
            if (f == NULL) {
                snprintf(err, errlen, "unknown field in unset");
                return -1;
            }
            ident(st, f->name);
            puts_(st, " = NULL, ");
        }
    }
    ident(st, "version");
    puts_(st, " = ");
    ident(st, "version");
    puts_(st, " + 1");
    where_key(st, d, key);
    and_version(st, if_match);
    fence_where(st, d);
    if (my) {
        my_reread(st, d, key);
    } else {
        returning(st, d);
    }
    return finish(st, err, errlen);
}

int sql_build_delete(struct sql_stmt *st, const struct cf_domain *d, const char *key,
                     int64_t if_match, char *err, size_t errlen)
{
    if (st->dialect == SQL_MYSQL) {
        /* the version FOR UPDATE first: it is the result (ETag of the deleted
         * item), and tells 404 from 412 when the DELETE matched nothing */
        puts_(st, "START TRANSACTION; SELECT ");
        ident(st, "version");
        col(st, SQL_COL_VERSION, NULL, NULL, 0);
        puts_(st, " FROM ");
        ident(st, d->table);
        where_key(st, d, key);
        puts_(st, " FOR UPDATE; DELETE FROM ");
        ident(st, d->table);
        where_key(st, d, key);
        and_version(st, if_match);
        fence_where(st, d);
        puts_(st, "; COMMIT");
        st->nstmts = 4;
        st->rows_at = 1;
        st->affected_at = 2;
        st->txn = 1;
        return finish(st, err, errlen);
    }
    puts_(st, "DELETE FROM ");
    ident(st, d->table);
    where_key(st, d, key);
    and_version(st, if_match);
    fence_where(st, d);
    puts_(st, " RETURNING ");
    ident(st, "version");
    col(st, SQL_COL_VERSION, NULL, NULL, 0);
    return finish(st, err, errlen);
}

/* ---- migration ----------------------------------------------------------------------- */

static void pg_type(struct sql_stmt *st, const struct cf_field *f)
{
    switch (f->type) {
    case CF_T_INT:
        puts_(st, "bigint");
        break;
    case CF_T_DECIMAL:
        if (f->scale >= 0) {
            putf(st, "numeric(%d,%d)", f->precision, f->scale);
        } else {
            puts_(st, "numeric");
        }
        break;
    case CF_T_BOOL:
        puts_(st, "boolean");
        break;
    case CF_T_TIMESTAMP:
        puts_(st, "timestamptz");
        break;
    case CF_T_OBJECT:
    case CF_T_ARRAY:
    case CF_T_JSON:
    case CF_T_COUNTERS:
        puts_(st, "jsonb");
        break;
    default:
        puts_(st, "text");
        break;
    }
}

size_t sql_mysql_varchar_len(const struct cf_domain *d, const struct cf_field *f)
{
    if (f->type == CF_T_ENUM) {
        size_t n = 1;
        for (size_t i = 0; i < f->nvalues; i++) {
            size_t l = strlen(f->values[i]);
            n = l > n ? l : n;
        }
        return n;
    }
    if (f->type != CF_T_STRING) {
        return 0;
    }
    if (strcmp(f->name, d->key) == 0 || f->unique || f->indexed) {
        /* an index needs a bounded length: 191 characters by default */
        return f->max_len > 0 ? f->max_len : 191;
    }
    return f->max_len > 0 && f->max_len <= 255 ? f->max_len : 0;
}

static void my_type(struct sql_stmt *st, const struct cf_domain *d, const struct cf_field *f)
{
    switch (f->type) {
    case CF_T_INT:
        puts_(st, "BIGINT");
        break;
    case CF_T_DECIMAL: {
        /* scale -1 (free): the gateway allows 18 places and 36 digits */
        int s = f->scale >= 0 ? f->scale : 18;
        int p = f->scale >= 0 ? f->precision : 36;
        putf(st, "DECIMAL(%d,%d)", p > s ? p : s, s);
        break;
    }
    case CF_T_BOOL:
        puts_(st, "TINYINT(1)");
        break;
    case CF_T_TIMESTAMP:
        puts_(st, "DATETIME(6)"); /* UTC: the session runs with time_zone '+00:00' */
        break;
    case CF_T_OBJECT:
    case CF_T_ARRAY:
    case CF_T_JSON:
    case CF_T_COUNTERS:
        puts_(st, "JSON"); /* MariaDB: LONGTEXT with a json_valid() CHECK */
        break;
    default: {
        size_t n = sql_mysql_varchar_len(d, f);
        if (n > 0) {
            putf(st, "VARCHAR(%zu)", n);
        } else {
            puts_(st, "MEDIUMTEXT");
        }
        break;
    }
    }
}

/* <table>_<suffix> as one identifier */
static void ident2(struct sql_stmt *st, const char *a, const char *b, const char *c)
{
    char stackbuf[256];
    size_t n = strlen(a) + 1 + strlen(b) + 1 + strlen(c) + 1;
    char *buf = n <= sizeof(stackbuf) ? stackbuf : malloc(n);
    if (buf == NULL) {
        st->oom = 1;
        return;
    }
    snprintf(buf, n, "%s_%s%s%s", a, b, c[0] ? "_" : "", c);
    ident(st, buf);
    if (buf != stackbuf) {
        free(buf);
    }
}

static int my_migrate(struct sql_stmt *st, const struct cf_domain *d, char *err, size_t errlen)
{
    puts_(st, "CREATE TABLE IF NOT EXISTS ");
    ident(st, d->table);
    puts_(st, " (");
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        ident(st, f->name);
        puts_(st, " ");
        my_type(st, d, f);
        if (f->required || strcmp(f->name, d->key) == 0) {
            puts_(st, " NOT NULL");
        }
        puts_(st, ", ");
    }
    ident(st, "version");
    puts_(st, " BIGINT NOT NULL DEFAULT 1");
    if (sharded(d)) {
        puts_(st, ", ");
        ident(st, "_slot");
        puts_(st, " INT NULL");
    }
    puts_(st, ", PRIMARY KEY (");
    ident(st, d->key);
    puts_(st, ")");
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        if (strcmp(f->name, d->key) == 0 || (!f->unique && !f->indexed)) {
            continue;
        }
        puts_(st, f->unique ? ", UNIQUE KEY " : ", KEY ");
        ident2(st, d->table, f->name, f->unique ? "key" : "idx");
        puts_(st, " (");
        ident(st, f->name);
        puts_(st, ")");
    }
    if (sharded(d)) {
        puts_(st, ", KEY ");
        ident2(st, d->table, "_slot", "idx");
        puts_(st, " (");
        ident(st, "_slot");
        puts_(st, ")");
    }
    puts_(st, ") ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin");
    st->rows_at = -1;
    return finish(st, err, errlen);
}

int sql_build_migrate(struct sql_stmt *st, const struct cf_domain *d, char *err, size_t errlen)
{
    if (st->dialect == SQL_MYSQL) {
        return my_migrate(st, d, err, errlen);
    }
    /* one simple-query string = one implicit transaction (rolled back as a
     * whole on error), serialised across workers and processes */
    puts_(st, "SELECT pg_advisory_xact_lock(7370153842196624); CREATE TABLE IF NOT EXISTS ");
    ident(st, d->table);
    puts_(st, " (");
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        ident(st, f->name);
        puts_(st, " ");
        pg_type(st, f);
        if (f->required || strcmp(f->name, d->key) == 0) {
            puts_(st, " NOT NULL");
        }
        puts_(st, ", ");
    }
    ident(st, "version");
    puts_(st, " bigint NOT NULL DEFAULT 1, ");
    if (sharded(d)) {
        ident(st, "_slot");
        puts_(st, " integer, ");
    }
    puts_(st, "CONSTRAINT ");
    ident2(st, d->table, "pkey", "");
    puts_(st, " PRIMARY KEY (");
    ident(st, d->key);
    puts_(st, ")); ");
    for (size_t i = 0; i < d->nfields; i++) { /* columns added to the config later */
        const struct cf_field *f = &d->fields[i];
        puts_(st, "ALTER TABLE ");
        ident(st, d->table);
        puts_(st, " ADD COLUMN IF NOT EXISTS ");
        ident(st, f->name);
        puts_(st, " ");
        pg_type(st, f);
        puts_(st, "; ");
    }
    for (size_t i = 0; i < d->nfields; i++) {
        const struct cf_field *f = &d->fields[i];
        if (strcmp(f->name, d->key) == 0 || (!f->unique && !f->indexed)) {
            continue;
        }
        puts_(st, f->unique ? "CREATE UNIQUE INDEX IF NOT EXISTS " : "CREATE INDEX IF NOT EXISTS ");
        ident2(st, d->table, f->name, f->unique ? "key" : "idx");
        puts_(st, " ON ");
        ident(st, d->table);
        puts_(st, " (");
        ident(st, f->name);
        puts_(st, "); ");
    }
    if (sharded(d)) {
        puts_(st, "ALTER TABLE ");
        ident(st, d->table);
        puts_(st, " ADD COLUMN IF NOT EXISTS ");
        ident(st, "_slot");
        puts_(st, " integer; CREATE INDEX IF NOT EXISTS ");
        ident2(st, d->table, "_slot", "idx");
        puts_(st, " ON ");
        ident(st, d->table);
        puts_(st, " (");
        ident(st, "_slot");
        puts_(st, "); ");
    }
    return finish(st, err, errlen);
}

const char *sql_constraint_field(const struct cf_domain *d, const char *constraint)
{
    if (constraint == NULL) {
        return NULL;
    }
    const char *dot = strrchr(constraint, '.'); /* MySQL 8: `table`.`name` */
    if (dot != NULL) {
        constraint = dot + 1;
    }
    if (strcmp(constraint, "PRIMARY") == 0) { /* MySQL's name for the primary key */
        return d->key;
    }
    size_t tl = strlen(d->table);
    if (strncmp(constraint, d->table, tl) != 0 || constraint[tl] != '_') {
        return NULL;
    }
    const char *rest = constraint + tl + 1;
    if (strcmp(rest, "pkey") == 0) {
        return d->key;
    }
    for (size_t i = 0; i < d->nfields; i++) {
        size_t fl = strlen(d->fields[i].name);
        if (strncmp(rest, d->fields[i].name, fl) == 0 && strcmp(rest + fl, "_key") == 0) {
            return d->fields[i].name;
        }
    }
    return NULL;
}
