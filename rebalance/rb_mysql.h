/*
 * rb_mysql.h — the slot mover of MySQL / MariaDB backends (Connector/C, blocking)
 * (rebalance/rb_mover.h).
 */
#ifndef RB_MYSQL_H
#define RB_MYSQL_H

#include "rebalance/rb_mover.h"

extern const struct rb_mover_ops rb_mysql_ops;

#endif
