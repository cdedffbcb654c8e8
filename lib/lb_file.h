/*
 * lb_file.h — files written whole or not at all.
 */
#ifndef LB_FILE_H
#define LB_FILE_H

#include <stddef.h>

/* Replace `path` with `len` bytes of `data` atomically: a temporary file in
 * the same directory (mode 0644), written whole and fsync()ed, renamed over
 * `path`, then the directory fsync()ed so that the rename is durable too.
 * A reader sees the old file or the new one, never a part; after a crash the
 * file is one or the other.  0, or -1 with err naming the file and the
 * reason (the temporary file is removed then). */
int lb_write_file_atomic(const char *path, const void *data, size_t len, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
