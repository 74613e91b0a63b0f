/*
 * util.c
 *		Allocation that exits on failure, the growable buffer, and clocks.
 *
 * aggr-publisher is a short-lived command-line program: running out of memory
 * is reported once and ends the run, so no caller has to check for NULL.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

static void
OutOfMemory(size_t size)
{
	fprintf(stderr, "aggr-publisher: out of memory (requesting %zu bytes)\n", size);
	exit(2);
}

void *
AggrMalloc(size_t size)
{
	void	   *p = malloc(size ? size : 1);

	if (p == NULL)
		OutOfMemory(size);
	return p;
}

void *
AggrCalloc(size_t n, size_t size)
{
	void	   *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL)
		OutOfMemory(n * size);
	return p;
}

void *
AggrRealloc(void *ptr, size_t size)
{
	void	   *p = realloc(ptr, size ? size : 1);

	if (p == NULL)
		OutOfMemory(size);
	return p;
}

void
AggrBufInit(AggrBuf *buf)
{
	buf->data = NULL;
	buf->len = 0;
	buf->cap = 0;
}

/* Make room for at least extra more bytes plus a terminating NUL. */
void
AggrBufReserve(AggrBuf *buf, size_t extra)
{
	size_t		need = buf->len + extra + 1;
	size_t		cap;

	if (need <= buf->cap)
		return;
	cap = buf->cap ? buf->cap : 256;
	while (cap < need)
		cap *= 2;
	buf->data = AggrRealloc(buf->data, cap);
	buf->cap = cap;
}

void
AggrBufAppend(AggrBuf *buf, const void *data, size_t len)
{
	AggrBufReserve(buf, len);
	if (len > 0)
		memcpy(buf->data + buf->len, data, len);
	buf->len += len;
	buf->data[buf->len] = '\0';
}

void
AggrBufAppendStr(AggrBuf *buf, const char *str)
{
	AggrBufAppend(buf, str, strlen(str));
}

void
AggrBufPrintf(AggrBuf *buf, const char *fmt,...)
{
	va_list		ap;
	int			n;

	AggrBufReserve(buf, 64);
	va_start(ap, fmt);
	n = vsnprintf(buf->data + buf->len, buf->cap - buf->len, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t) n >= buf->cap - buf->len)
	{
		AggrBufReserve(buf, (size_t) n);
		va_start(ap, fmt);
		vsnprintf(buf->data + buf->len, buf->cap - buf->len, fmt, ap);
		va_end(ap);
	}
	buf->len += (size_t) n;
}

void
AggrBufReset(AggrBuf *buf)
{
	buf->len = 0;
	if (buf->data)
		buf->data[0] = '\0';
}

void
AggrBufFree(AggrBuf *buf)
{
	free(buf->data);
	AggrBufInit(buf);
}

double
AggrNowMs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000.0 + ts.tv_nsec / 1e6;
}

int64_t
AggrWallMs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}
