/*
 * lb_log.h — one-line logs to stderr with a level and a context.
 */
#ifndef GW_LOG_H
#define GW_LOG_H

enum gw_log_level { GW_LOG_DEBUG, GW_LOG_INFO, GW_LOG_WARN, GW_LOG_ERROR };

/* Set from the config; reloadable (read atomically). */
void gw_log_set_level(const char *name);
int gw_log_enabled(enum gw_log_level lv);
void gw_log(enum gw_log_level lv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define gw_debug(...)                                                                              \
    do {                                                                                           \
        if (gw_log_enabled(GW_LOG_DEBUG))                                                          \
            gw_log(GW_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)
#define gw_info(...) gw_log(GW_LOG_INFO, __VA_ARGS__)
#define gw_warn(...) gw_log(GW_LOG_WARN, __VA_ARGS__)
#define gw_error(...) gw_log(GW_LOG_ERROR, __VA_ARGS__)

#endif
