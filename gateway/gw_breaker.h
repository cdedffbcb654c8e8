/*
 * gw_breaker.h — one circuit breaker per backend shard, shared by workers.
 *
 *   closed ──N consecutive failures──▶ open ──open_ms──▶ half-open
 *     ▲                                 ▲                   │ one probe
 *     └────────── probe succeeds ───────┼─── probe fails ───┘
 *
 * A failure is what says the shard itself is in trouble, not that one
 * caller asked for something expensive (gw_request.c, backend_outcome();
 * the rule is in docs/design.md): a refused or lost connection
 * (AD_UNAVAILABLE, AD_EDOWN), and a deadline that fired on a cheap operation
 * (get, put, insert, patch, delete, ping) while the shard answered nothing
 * else.  A _query or _aggregate that runs into its deadline, or fails while
 * the shard answers other requests, is the caller's own cost and counts as
 * neither; so does any timeout while other requests of the shard succeed
 * (the shard is busy, not down).  Answers of the store (404, 409, 400, even
 * an unexpected 500) are successes: the shard is alive.  A full wait queue
 * counts as neither.
 *
 * While open, requests for the shard are refused before they reach the
 * adapter (503 naming the shard, Retry-After), so a hung database costs
 * callers microseconds instead of the request deadline, and the adapter's
 * queue stops growing.  After open_ms one request goes through as a probe
 * (half-open); its success closes the circuit, its failure re-opens it for
 * another open_ms.  Readiness pings are never refused, and their outcomes
 * count like any other: /ready both reports and heals the circuit.
 *
 * The state is shared by all workers (indexed by the interned shard id of
 * gw_shard.h) and kept in atomics: the request path does one relaxed
 * load when the circuit is closed and writes only when something changes.
 */
#ifndef GW_BREAKER_H
#define GW_BREAKER_H

#include <stdint.h>

enum gw_breaker_state { GW_BRK_CLOSED = 0, GW_BRK_OPEN = 1, GW_BRK_HALF_OPEN = 2 };

/* failures = 0 disables the breakers.  Reloadable. */
void gw_breaker_configure(int failures, int64_t open_ms);

/* 1: submit (a probe when the circuit was open); 0: refuse, *retry_ms = time
 * until the next probe may go. */
int gw_breaker_allow(int id, uint64_t now_ms, uint64_t *retry_ms);
/* The outcome of a request that allow() let through (or a ping). */
void gw_breaker_record(int id, int ok, uint64_t now_ms, const char *why);

/* 1 when a request of the shard succeeded after since_ms (the shard is
 * alive and answering: a timeout meanwhile is load, not a failure). */
int gw_breaker_answered_since(int id, uint64_t since_ms);

/* What is known without asking the shard (a prompt /ready): 1 when it has
 * answered before, its last outcome was a success and its circuit is
 * closed; 0 when nothing is known or the last outcome was a failure. */
int gw_breaker_healthy(int id);
/* 1 when anything is known about the shard (an outcome was recorded). */
int gw_breaker_known(int id);

enum gw_breaker_state gw_breaker_state(int id);
const char *gw_breaker_state_name(enum gw_breaker_state s);
int gw_breaker_failures(int id);   /* consecutive failures now */
uint64_t gw_breaker_opens(int id); /* times it opened (closed/half-open → open) */

#endif
