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

/* append the NUL-terminated s as a quoted JSON string */
void
AggrBufJsonString(AggrBuf *buf, const char *s)
{
	AggrJsonAppendString(buf, s, strlen(s));
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
/* set by the fuzz harness, which runs request.c a million times a minute */
bool		aggr_log_muted = false;

void
AggrLogV(const char *level, const char *fmt, va_list ap)
{
	AggrBuf		line;
	char		now[40];
	char		msg[1024];
	size_t		len;

	if (aggr_log_muted)
		return;
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
