/* Appending messages to a caller's error buffer: every problem is listed, one per line. */
#ifndef MLR_ERRBUF_H
#define MLR_ERRBUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

/* Appends a formatted line (a newline first when the buffer is not empty). Truncates safely. */
static inline void errbuf_add(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static inline void errbuf_add(char *err, size_t err_len, const char *fmt, ...) {
    if (!err || err_len == 0) return;
    size_t used = strnlen(err, err_len);
    if (used + 2 >= err_len) return;
    if (used > 0) err[used++] = '\n';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + used, err_len - used, fmt, ap);
    va_end(ap);
}

#endif /* MLR_ERRBUF_H */
