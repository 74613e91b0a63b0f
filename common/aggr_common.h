/*
 * aggr_common.h
 *		What aggr-sidecar and aggr-publisher share: allocation that never
 *		returns NULL, a growable byte buffer, and JSON string escaping.
 *		Compiled into each program (common/common.c); not used by the
 *		extension, which has PostgreSQL's own.
 */
#ifndef AGGR_COMMON_H
#define AGGR_COMMON_H

#include <stdbool.h>
#include <stddef.h>

/* A growable byte buffer; after AggrBufInit, data is NUL-terminated. */
typedef struct AggrBuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
} AggrBuf;

/* On failure these print "<program>: out of memory" and exit(2). */
extern void *AggrMalloc(size_t size);
extern void *AggrCalloc(size_t n, size_t size);
extern void *AggrRealloc(void *ptr, size_t size);
extern char *AggrStrdup(const char *s);

/* cap is a first guess of the size; the buffer grows as needed */
extern void AggrBufInit(AggrBuf *buf, size_t cap);
extern void AggrBufReserve(AggrBuf *buf, size_t extra);
extern void AggrBufAppend(AggrBuf *buf, const void *data, size_t len);
extern void AggrBufAppendStr(AggrBuf *buf, const char *str);
extern void AggrBufPrintf(AggrBuf *buf, const char *fmt,...)
			__attribute__((format(printf, 2, 3)));
extern void AggrBufReset(AggrBuf *buf);
extern void AggrBufFree(AggrBuf *buf);

/* whether s[0..len) is valid UTF-8 (no overlong forms or surrogates) */
extern bool AggrValidUtf8(const char *s, size_t len);

/*
 * Appends s[0..len) as a quoted JSON string: quotes, backslashes and
 * control characters escaped, bytes that are not valid UTF-8 as \ufffd, so
 * the output is valid JSON whatever the input.
 */
extern void AggrJsonAppendString(AggrBuf *buf, const char *s, size_t len);

/* Sleeps this many milliseconds (fractions allowed). */
extern void AggrSleepMs(double ms);

#endif							/* AGGR_COMMON_H */
