/*
 * util.h
 *		Small helpers every part of aggr-publisher uses: allocation that never
 *		returns NULL, a growable byte buffer, and the clocks.
 */
#ifndef AGGR_UTIL_H
#define AGGR_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* A growable byte buffer; data is always NUL-terminated when len > 0. */
typedef struct AggrBuf
{
	char	   *data;
	size_t		len;
	size_t		cap;
} AggrBuf;

extern void *AggrMalloc(size_t size);
extern void *AggrCalloc(size_t n, size_t size);
extern void *AggrRealloc(void *ptr, size_t size);

extern void AggrBufInit(AggrBuf *buf);
extern void AggrBufReserve(AggrBuf *buf, size_t extra);
extern void AggrBufAppend(AggrBuf *buf, const void *data, size_t len);
extern void AggrBufAppendStr(AggrBuf *buf, const char *str);
extern void AggrBufPrintf(AggrBuf *buf, const char *fmt,...)
			__attribute__((format(printf, 2, 3)));
extern void AggrBufReset(AggrBuf *buf);
extern void AggrBufFree(AggrBuf *buf);

/* Monotonic milliseconds (for durations) and Unix wall-clock milliseconds. */
extern double AggrNowMs(void);
extern int64_t AggrWallMs(void);

#endif							/* AGGR_UTIL_H */
