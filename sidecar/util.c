/*-------------------------------------------------------------------------
 *
 * util.c
 *	  Small helpers of aggr-sidecar: allocation that never returns NULL, a
 *	  growable buffer, output escaping (JSON strings, URL query values),
 *	  strict integer parsing, clocks and the JSON log line writer.
 *
 *	  Escaping is output only: the sidecar never parses JSON.  Strings it
 *	  escapes may hold any bytes (a decoded URL path, a libpq message), so
 *	  bytes that are not valid UTF-8 become U+FFFD and the output is always
 *	  valid JSON.
 *
 *-------------------------------------------------------------------------
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sidecar.h"

void *
AggrMalloc(size_t size)
{
	void	   *p = malloc(size ? size : 1);

	if (p == NULL)
	{
		fputs("aggr-sidecar: out of memory\n", stderr);
		abort();
	}
	return p;
}

void *
AggrRealloc(void *ptr, size_t size)
{
	void	   *p = realloc(ptr, size ? size : 1);

	if (p == NULL)
	{
		fputs("aggr-sidecar: out of memory\n", stderr);
		abort();
	}
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

static void
BufReserve(AggrBuf *buf, size_t more)
{
	size_t		need = buf->len + more + 1;

	if (need <= buf->cap)
		return;
	while (buf->cap < need)
		buf->cap *= 2;
	buf->data = AggrRealloc(buf->data, buf->cap);
}

void
AggrBufAppend(AggrBuf *buf, const char *data, size_t len)
{
	BufReserve(buf, len);
	memcpy(buf->data + buf->len, data, len);
	buf->len += len;
	buf->data[buf->len] = '\0';
}

void
AggrBufAppendStr(AggrBuf *buf, const char *s)
{
	AggrBufAppend(buf, s, strlen(s));
}

void
AggrBufPrintf(AggrBuf *buf, const char *fmt,...)
{
	for (;;)
	{
		va_list		ap;
		size_t		avail = buf->cap - buf->len;
		int			n;

		va_start(ap, fmt);
		n = vsnprintf(buf->data + buf->len, avail, fmt, ap);
		va_end(ap);
		if (n < 0)
			return;
		if ((size_t) n < avail)
		{
			buf->len += n;
			return;
		}
		BufReserve(buf, n);
	}
}

/*
 * Length of the valid UTF-8 sequence starting at s (1 to 4), or 0 when the
 * bytes there are not one (overlong forms and surrogates included).
 */
static int
Utf8SequenceLength(const unsigned char *s)
{
	int			len;
	uint32_t	cp;

	if (s[0] < 0x80)
		return 1;
	else if ((s[0] & 0xE0) == 0xC0)
	{
		len = 2;
		cp = s[0] & 0x1F;
	}
	else if ((s[0] & 0xF0) == 0xE0)
	{
		len = 3;
		cp = s[0] & 0x0F;
	}
	else if ((s[0] & 0xF8) == 0xF0)
	{
		len = 4;
		cp = s[0] & 0x07;
	}
	else
		return 0;
	for (int i = 1; i < len; i++)
	{
		if ((s[i] & 0xC0) != 0x80)
			return 0;			/* also stops at the terminating NUL */
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
		(len == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
		(cp >= 0xD800 && cp <= 0xDFFF))
		return 0;
	return len;
}

/* append s as a quoted JSON string */
void
AggrBufJsonString(AggrBuf *buf, const char *s)
{
	const unsigned char *p = (const unsigned char *) s;

	AggrBufAppend(buf, "\"", 1);
	while (*p)
	{
		int			len;

		switch (*p)
		{
			case '"':
				AggrBufAppend(buf, "\\\"", 2);
				break;
			case '\\':
				AggrBufAppend(buf, "\\\\", 2);
				break;
			case '\n':
				AggrBufAppend(buf, "\\n", 2);
				break;
			case '\r':
				AggrBufAppend(buf, "\\r", 2);
				break;
			case '\t':
				AggrBufAppend(buf, "\\t", 2);
				break;
			default:
				if (*p < 0x20)
				{
					AggrBufPrintf(buf, "\\u%04x", *p);
					break;
				}
				len = Utf8SequenceLength(p);
				if (len == 0)
				{
					AggrBufAppend(buf, "\\ufffd", 6);
					break;
				}
				AggrBufAppend(buf, (const char *) p, len);
				p += len;
				continue;
		}
		p++;
	}
	AggrBufAppend(buf, "\"", 1);
}

/* append s percent-encoded for a URL query value (RFC 3986 unreserved kept) */
void
AggrBufUrlEncode(AggrBuf *buf, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";

	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		if ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') ||
			(*p >= '0' && *p <= '9') || *p == '-' || *p == '.' ||
			*p == '_' || *p == '~')
			AggrBufAppend(buf, (const char *) p, 1);
		else
		{
			char		esc[3] = {'%', hex[*p >> 4], hex[*p & 15]};

			AggrBufAppend(buf, esc, 3);
		}
	}
}

void
AggrBufFree(AggrBuf *buf)
{
	free(buf->data);
	buf->data = NULL;
	buf->len = buf->cap = 0;
}

/* a decimal integer with an optional '-', nothing else, no overflow */
bool
AggrParseInt64(const char *s, int64_t *out)
{
	const char *p = s;
	char	   *end;
	long long	v;

	if (*p == '-')
		p++;
	if (*p < '0' || *p > '9')
		return false;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0')
		return false;
	*out = v;
	return true;
}

int64_t
AggrNowUs(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* "2025-10-24T00:00:00.123Z" */
void
AggrFormatUtcNow(char *out, size_t outlen)
{
	struct timespec ts;
	struct tm	tm;
	char		base[32];

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, outlen, "%s.%03ldZ", base, ts.tv_nsec / 1000000);
}

/*
 * One JSON line on stderr, written with a single write(2) so that lines
 * from different threads never interleave.
 */
void
AggrLogV(const char *level, const char *fmt, va_list ap)
{
	AggrBuf		line;
	char		now[40];
	char		msg[1024];
	size_t		len;

	vsnprintf(msg, sizeof(msg), fmt, ap);
	len = strlen(msg);
	while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
		msg[--len] = '\0';
	AggrFormatUtcNow(now, sizeof(now));
	AggrBufInit(&line, 256);
	AggrBufPrintf(&line, "{\"time\":\"%s\",\"level\":\"%s\",\"msg\":", now, level);
	AggrBufJsonString(&line, msg);
	AggrBufAppend(&line, "}\n", 2);
	if (write(STDERR_FILENO, line.data, line.len) < 0)
	{
		/* nowhere left to report it */
	}
	AggrBufFree(&line);
}

void
AggrLog(const char *level, const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	AggrLogV(level, fmt, ap);
	va_end(ap);
}
