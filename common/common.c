/*
 * common.c
 *		Allocation, the growable buffer and JSON string escaping shared by
 *		aggr-sidecar and aggr-publisher (see aggr_common.h).
 */
#define _GNU_SOURCE				/* program_invocation_short_name */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "aggr_common.h"

static void
OutOfMemory(size_t size)
{
	fprintf(stderr, "%s: out of memory (requesting %zu bytes)\n",
			program_invocation_short_name, size);
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

char *
AggrStrdup(const char *s)
{
	size_t		len = strlen(s);
	char	   *p = AggrMalloc(len + 1);

	memcpy(p, s, len + 1);
	return p;
}

void
AggrBufInit(AggrBuf *buf, size_t cap)
{
	buf->cap = cap < 64 ? 64 : cap;
	buf->data = AggrMalloc(buf->cap);
	buf->data[0] = '\0';
	buf->len = 0;
}

/* Makes room for extra more bytes plus the terminating NUL. */
void
AggrBufReserve(AggrBuf *buf, size_t extra)
{
	size_t		need = buf->len + extra + 1;
	size_t		cap = buf->cap ? buf->cap : 64;

	if (need <= buf->cap)
		return;
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
	buf->data = NULL;
	buf->len = 0;
	buf->cap = 0;
}

/*
 * Length of the valid UTF-8 sequence at s (at most n bytes), or 0 when the
 * bytes there are not one (overlong forms, surrogates, above U+10FFFF).
 */
static size_t
Utf8SequenceLength(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t		need;
	unsigned char lo = 0x80;
	unsigned char hi = 0xBF;

	if (c < 0x80)
		return 1;
	if (c >= 0xC2 && c <= 0xDF)
		need = 2;
	else if (c >= 0xE0 && c <= 0xEF)
	{
		need = 3;
		if (c == 0xE0)
			lo = 0xA0;
		else if (c == 0xED)
			hi = 0x9F;
	}
	else if (c >= 0xF0 && c <= 0xF4)
	{
		need = 4;
		if (c == 0xF0)
			lo = 0x90;
		else if (c == 0xF4)
			hi = 0x8F;
	}
	else
		return 0;
	if (n < need || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < need; i++)
		if (s[i] < 0x80 || s[i] > 0xBF)
			return 0;
	return need;
}

bool
AggrValidUtf8(const char *s, size_t len)
{
	const unsigned char *p = (const unsigned char *) s;

	for (size_t i = 0, n; i < len; i += n)
		if ((n = Utf8SequenceLength(p + i, len - i)) == 0)
			return false;
	return true;
}

void
AggrJsonAppendString(AggrBuf *buf, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	static const char short_escape[0x20] = {
		['\b'] = 'b',
		['\f'] = 'f',
		['\n'] = 'n',
		['\r'] = 'r',
		['\t'] = 't',
	};
	const unsigned char *p = (const unsigned char *) s;
	size_t		i = 0;

	AggrBufReserve(buf, len + 2);
	AggrBufAppend(buf, "\"", 1);
	while (i < len)
	{
		unsigned char c = p[i];
		size_t		run = i;
		size_t		n;

		/* copy the longest run that needs no escaping in one go */
		while (run < len && p[run] >= 0x20 && p[run] < 0x80 &&
			   p[run] != '"' && p[run] != '\\')
			run++;
		if (run > i)
		{
			AggrBufAppend(buf, p + i, run - i);
			i = run;
			continue;
		}
		if (c == '"' || c == '\\' || (c < 0x20 && short_escape[c]))
		{
			char		esc[2] = {'\\', c < 0x20 ? short_escape[c] : (char) c};

			AggrBufAppend(buf, esc, 2);
			i++;
		}
		else if (c < 0x20)
		{
			char		esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};

			AggrBufAppend(buf, esc, 6);
			i++;
		}
		else if ((n = Utf8SequenceLength(p + i, len - i)) == 0)
		{
			AggrBufAppend(buf, "\\ufffd", 6);
			i++;
		}
		else
		{
			AggrBufAppend(buf, p + i, n);
			i += n;
		}
	}
	AggrBufAppend(buf, "\"", 1);
}

void
AggrSleepMs(double ms)
{
	struct timespec ts;

	if (ms <= 0)
		return;
	ts.tv_sec = (time_t) (ms / 1000);
	ts.tv_nsec = (long) ((ms - ts.tv_sec * 1000.0) * 1e6);
	nanosleep(&ts, NULL);
}
