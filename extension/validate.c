/*
 * validate.c
 *		Validation of published events: the request shape (one object or a
 *		non-empty array of objects) and each event's fields, turned into the
 *		columns the ingest statement takes.
 *
 * Validation is all or nothing: the SQL entry points reject the whole
 * request on the first bad event, naming its index and field.  The consumer
 * workers call AggrCheckEvent directly, which reports instead of raising, so
 * one poison element can be dead-lettered without failing its batch.
 */
#include "postgres.h"

#include "aggr.h"
#include "ingest.h"

#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/memutils.h"

static Datum empty_payload = (Datum) 0;

/*
 * A batch for capacity events.  Without store, events are only checked
 * (broker mode: the consumer builds the columns later).
 */
void
AggrBatchInit(AggrBatch *batch, int capacity, bool store)
{
	batch->nevents = 0;
	batch->capacity = capacity;
	batch->store = store;
	if (!store)
		return;
	batch->topics = palloc(sizeof(Datum) * capacity);
	batch->event_ids = palloc(sizeof(Datum) * capacity);
	batch->timestamps = palloc(sizeof(Datum) * capacity);
	batch->sources = palloc(sizeof(Datum) * capacity);
	batch->payloads = palloc(sizeof(Datum) * capacity);
}

/* Makes room for more events in a storing batch (grows by doubling). */
void
AggrBatchReserve(AggrBatch *batch, int more)
{
	int			capacity = batch->capacity;

	Assert(batch->store);
	if (batch->nevents + more <= capacity)
		return;
	while (capacity < batch->nevents + more)
		capacity *= 2;
	batch->topics = repalloc(batch->topics, sizeof(Datum) * capacity);
	batch->event_ids = repalloc(batch->event_ids, sizeof(Datum) * capacity);
	batch->timestamps = repalloc(batch->timestamps, sizeof(Datum) * capacity);
	batch->sources = repalloc(batch->sources, sizeof(Datum) * capacity);
	batch->payloads = repalloc(batch->payloads, sizeof(Datum) * capacity);
	batch->capacity = capacity;
}

/* Reads exactly ndigits decimal digits. */
static bool
ReadDigits(const char **p, const char *end, int ndigits, int *value)
{
	int			v = 0;

	if (end - *p < ndigits)
		return false;
	for (int i = 0; i < ndigits; i++)
	{
		char		c = (*p)[i];

		if (c < '0' || c > '9')
			return false;
		v = v * 10 + (c - '0');
	}
	*p += ndigits;
	*value = v;
	return true;
}

static bool
ExpectChar(const char **p, const char *end, char c)
{
	if (*p >= end || **p != c)
		return false;
	(*p)++;
	return true;
}

/*
 * Parses an ISO-8601 date-time: YYYY-MM-DD, optionally followed by
 * [T|t| ]HH:MM[:SS[.fraction]] and a zone (Z, +HH, +HH:MM, +HHMM).  No zone
 * means UTC, never the session's TimeZone.  Fractions beyond microseconds
 * are truncated.  PostgreSQL's own input function is deliberately not used:
 * it also accepts 'now', 'epoch' and free-form dates.
 */
static bool
AggrParseIsoTimestamp(const char *str, int len, TimestampTz *result)
{
	const char *p = str;
	const char *end = str + len;
	int			year,
				mon,
				mday,
				hour = 0,
				min = 0,
				sec = 0;
	fsec_t		fsec = 0;
	int			offset_east = 0;
	int			tz;
	struct pg_tm tm;

	if (!ReadDigits(&p, end, 4, &year) || !ExpectChar(&p, end, '-') ||
		!ReadDigits(&p, end, 2, &mon) || !ExpectChar(&p, end, '-') ||
		!ReadDigits(&p, end, 2, &mday))
		return false;

	if (p < end)
	{
		if (*p != 'T' && *p != 't' && *p != ' ')
			return false;
		p++;
		if (!ReadDigits(&p, end, 2, &hour) || !ExpectChar(&p, end, ':') ||
			!ReadDigits(&p, end, 2, &min))
			return false;
		if (p < end && *p == ':')
		{
			p++;
			if (!ReadDigits(&p, end, 2, &sec))
				return false;
			if (p < end && (*p == '.' || *p == ','))
			{
				int			ndigits = 0;

				p++;
				while (p < end && *p >= '0' && *p <= '9')
				{
					if (ndigits < 6)
						fsec = fsec * 10 + (*p - '0');
					ndigits++;
					p++;
				}
				if (ndigits == 0 || ndigits > 9)
					return false;
				for (; ndigits < 6; ndigits++)
					fsec *= 10;
			}
		}
		if (p < end && (*p == 'Z' || *p == 'z'))
			p++;
		else if (p < end && (*p == '+' || *p == '-'))
		{
			int			sign = (*p == '-') ? -1 : 1;
			int			off_hour,
						off_min = 0;

			p++;
			if (!ReadDigits(&p, end, 2, &off_hour))
				return false;
			if (p < end && *p == ':')
				p++;
			if (p < end && !ReadDigits(&p, end, 2, &off_min))
				return false;
			if (off_hour > 15 || off_min > 59)
				return false;
			offset_east = sign * (off_hour * SECS_PER_HOUR + off_min * SECS_PER_MINUTE);
		}
	}
	if (p != end)
		return false;

	if (year < 1 || mon < 1 || mon > 12 || mday < 1 ||
		mday > day_tab[isleap(year)][mon - 1] ||
		hour > 23 || min > 59 || sec > 59)
		return false;

	memset(&tm, 0, sizeof(tm));
	tm.tm_year = year;
	tm.tm_mon = mon;
	tm.tm_mday = mday;
	tm.tm_hour = hour;
	tm.tm_min = min;
	tm.tm_sec = sec;
	tz = -offset_east;			/* PostgreSQL counts zones west of UTC */
	if (tm2timestamp(&tm, fsec, &tz, result) != 0)
		return false;
	return IS_VALID_TIMESTAMP(*result);
}

/*
 * Unix time in seconds, possibly fractional and negative.  Read from the
 * numeric's exact decimal text so microseconds are not rounded by a double.
 */
static bool
ParseUnixSeconds(Numeric num, TimestampTz *result)
{
	char	   *text = DatumGetCString(DirectFunctionCall1(numeric_out,
														   NumericGetDatum(num)));
	const char *p = text;
	bool		negative = false;
	int64		seconds = 0;
	int64		micros = 0;
	int			ndigits = 0;

	if (*p == '-')
	{
		negative = true;
		p++;
	}
	for (; *p >= '0' && *p <= '9'; p++)
	{
		if (++ndigits > 12)
			return false;		/* far outside the timestamp range */
		seconds = seconds * 10 + (*p - '0');
	}
	if (ndigits == 0)
		return false;
	if (*p == '.')
	{
		int			nfrac = 0;

		for (p++; *p >= '0' && *p <= '9'; p++)
		{
			if (nfrac < 6)
			{
				micros = micros * 10 + (*p - '0');
				nfrac++;
			}
		}
		for (; nfrac < 6; nfrac++)
			micros *= 10;
	}
	if (*p != '\0')
		return false;

	micros += seconds * USECS_PER_SEC;
	if (negative)
		micros = -micros;
	*result = micros - (int64) (POSTGRES_EPOCH_JDATE - UNIX_EPOCH_JDATE) *
		SECS_PER_DAY * USECS_PER_SEC;
	return IS_VALID_TIMESTAMP(*result);
}

/*
 * The field checks below set *value only when value is not NULL (a batch
 * that stores its columns).
 */

/* A required JSON string of 1 to AGGR_FIELD_MAX_CHARS characters. */
static const char *
CheckStringField(JsonbContainer *event, const char *name, Datum *value)
{
	JsonbValue	v;
	int			len;

	if (!getKeyJsonValueFromContainer(event, name, strlen(name), &v))
		return psprintf("%s is required", name);
	len = (v.type == jbvString) ? v.val.string.len : 0;
	/* a character takes at least one byte, so only long strings are counted */
	if (len == 0 ||
		(len > AGGR_FIELD_MAX_CHARS &&
		 pg_mbstrlen_with_len(v.val.string.val, len) > AGGR_FIELD_MAX_CHARS))
		return psprintf("%s must be a string of 1 to %d characters",
						name, AGGR_FIELD_MAX_CHARS);
	if (value)
		*value = PointerGetDatum(cstring_to_text_with_len(v.val.string.val, len));
	return NULL;
}

static const char *
CheckTimestamp(JsonbContainer *event, Datum *value)
{
	JsonbValue	v;
	TimestampTz ts;
	bool		ok = false;

	if (!getKeyJsonValueFromContainer(event, "timestamp", 9, &v))
		return "timestamp is required";
	if (v.type == jbvString)
		ok = AggrParseIsoTimestamp(v.val.string.val, v.val.string.len, &ts);
	else if (v.type == jbvNumeric)
		ok = ParseUnixSeconds(v.val.numeric, &ts);
	if (!ok)
		return "timestamp must be an ISO-8601 date-time or a Unix time in seconds within the timestamp range";
	if (value)
		*value = TimestampTzGetDatum(ts);
	return NULL;
}

static const char *
CheckPayload(JsonbContainer *event, Datum *value)
{
	JsonbValue	v;

	if (!getKeyJsonValueFromContainer(event, "payload", 7, &v) || v.type == jbvNull)
	{
		if (value == NULL)
			return NULL;
		if (empty_payload == (Datum) 0)
		{
			MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

			empty_payload = DirectFunctionCall1(jsonb_in, CStringGetDatum("{}"));
			MemoryContextSwitchTo(old);
		}
		*value = empty_payload;
		return NULL;
	}
	if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
		return "payload must be a JSON object";
	if (value)
		*value = PointerGetDatum(JsonbValueToJsonb(&v));
	return NULL;
}

/*
 * Checks one event and, when it is valid, appends its columns to the batch.
 * Returns NULL, or a message naming the offending field.  Never raises for
 * bad input.
 */
const char *
AggrCheckEvent(JsonbContainer *event, AggrBatch *batch)
{
	int			i = batch->nevents;
	bool		store = batch->store;
	const char *error;

	Assert(i < batch->capacity);
	if (!JsonContainerIsObject(event))
		return "must be a JSON object";
	if ((error = CheckStringField(event, "topic", store ? &batch->topics[i] : NULL)) != NULL ||
		(error = CheckStringField(event, "event_id", store ? &batch->event_ids[i] : NULL)) != NULL ||
		(error = CheckTimestamp(event, store ? &batch->timestamps[i] : NULL)) != NULL ||
		(error = CheckStringField(event, "source", store ? &batch->sources[i] : NULL)) != NULL ||
		(error = CheckPayload(event, store ? &batch->payloads[i] : NULL)) != NULL)
		return error;
	batch->nevents++;
	return NULL;
}

/*
 * Validates a whole request into a batch (its columns too, with store),
 * raising on the first bad event.
 */
void
AggrValidateRequest(Jsonb *request, AggrBatch *batch, bool store)
{
	JsonbContainer *root = &request->root;
	int			nevents;

	if (JB_ROOT_IS_SCALAR(request) ||
		(JB_ROOT_IS_ARRAY(request) && JB_ROOT_COUNT(request) == 0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("request must be a JSON object or a non-empty array of objects")));

	nevents = JB_ROOT_IS_OBJECT(request) ? 1 : JB_ROOT_COUNT(request);
	if (nevents > aggr_max_request_events)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("request holds %d events, more than aggr.max_request_events (%d)",
						nevents, aggr_max_request_events),
				 errhint("Split the request into smaller batches.")));

	AggrBatchInit(batch, nevents, store);
	for (int i = 0; i < nevents; i++)
	{
		const char *error;

		if (JB_ROOT_IS_OBJECT(request))
			error = AggrCheckEvent(root, batch);
		else
		{
			JsonbValue *element = getIthJsonbValueFromContainer(root, i);

			error = (element->type == jbvBinary) ?
				AggrCheckEvent(element->val.binary.data, batch) :
				"must be a JSON object";
		}
		if (error != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("event %d: %s", i, error),
					 errdetail("The request was rejected as a whole; no event was stored.")));
	}
}
