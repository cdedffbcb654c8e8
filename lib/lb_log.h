/*
 * lb_log.h — one-line logs to stderr with a level and a context.
 */
#ifndef LB_LOG_H
#define LB_LOG_H

enum lb_log_level { LB_LOG_DEBUG, LB_LOG_INFO, LB_LOG_WARN, LB_LOG_ERROR };

/* Set from the config; reloadable (read atomically). */
void lb_log_set_level(const char *name);
int lb_log_enabled(enum lb_log_level lv);
void lb_log(enum lb_log_level lv, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define lb_debug(...)                                                                              \
    do {                                                                                           \
        if (lb_log_enabled(LB_LOG_DEBUG))                                                          \
            lb_log(LB_LOG_DEBUG, __VA_ARGS__);                                                     \
    } while (0)
#define lb_info(...) lb_log(LB_LOG_INFO, __VA_ARGS__)
#define lb_warn(...) lb_log(LB_LOG_WARN, __VA_ARGS__)
#define lb_error(...) lb_log(LB_LOG_ERROR, __VA_ARGS__)

#endif
