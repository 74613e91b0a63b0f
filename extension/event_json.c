/*
 * event_json.c
 *		aggr_event_json(record) -> text: an event (a row of aggr.events, or of
 *		any type with its columns, such as a Citus shard's) as GET /events and the
 *		event stream show it, byte for byte what
 *		json_build_object('topic', e.topic, 'event_id', e.event_id,
 *		'timestamp', e."timestamp", 'source', e.source, 'payload', e.payload,
 *		'ingested_at', e.ingested_at)::text gives.  json_build_object looks
 *		up each argument's type in the catalog for every row: reading the
 *		event stream, that was half of the reading backend's time.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/typcache.h"

PG_FUNCTION_INFO_V1(aggr_event_json);

#define EVENT_JSON_FIELDS 6

/* the fields, in the order of the object, and the type each must have */
static const struct
{
	const char *name;
	Oid			type;
}			event_json_fields[EVENT_JSON_FIELDS] =

{
	{"topic", TEXTOID},
	{"event_id", TEXTOID},
	{"timestamp", TIMESTAMPTZOID},
	{"source", TEXTOID},
	{"payload", JSONBOID},
	{"ingested_at", TIMESTAMPTZOID},
};

/* the fields' attribute numbers in the row type, found once per call site */
typedef struct EventJsonColumns
{
	Oid			type;
	int32		typmod;
	AttrNumber	attnum[EVENT_JSON_FIELDS];
} EventJsonColumns;

static void
FindColumns(EventJsonColumns *columns, TupleDesc desc, Oid type, int32 typmod)
{
	for (int f = 0; f < EVENT_JSON_FIELDS; f++)
	{
		columns->attnum[f] = InvalidAttrNumber;
		for (int i = 0; i < desc->natts; i++)
		{
			Form_pg_attribute att = TupleDescAttr(desc, i);

			if (!att->attisdropped && strcmp(NameStr(att->attname), event_json_fields[f].name) == 0)
			{
				if (att->atttypid != event_json_fields[f].type)
					ereport(ERROR,
							errcode(ERRCODE_DATATYPE_MISMATCH),
							errmsg("aggr_event_json: column \"%s\" is of type %s, not %s",
								   event_json_fields[f].name, format_type_be(att->atttypid),
								   format_type_be(event_json_fields[f].type)));
				columns->attnum[f] = att->attnum;
			}
		}
		if (columns->attnum[f] == InvalidAttrNumber)
			ereport(ERROR,
					errcode(ERRCODE_UNDEFINED_COLUMN),
					errmsg("aggr_event_json: the row has no column \"%s\"", event_json_fields[f].name));
	}
	columns->type = type;
	columns->typmod = typmod;
}

/* whether the columns found earlier are still there, of their types */
static bool
ColumnsStillFit(const EventJsonColumns *columns, TupleDesc desc)
{
	for (int f = 0; f < EVENT_JSON_FIELDS; f++)
	{
		AttrNumber	attnum = columns->attnum[f];
		Form_pg_attribute att;

		if (attnum < 1 || attnum > desc->natts)
			return false;
		att = TupleDescAttr(desc, attnum - 1);
		if (att->attisdropped || att->atttypid != event_json_fields[f].type)
			return false;
	}
	return true;
}

/*
 * A text as a JSON string, as escape_json writes it; most need no escape,
 * and are copied whole.
 */
static void
AppendJsonString(StringInfo out, Datum value)
{
	text	   *t = DatumGetTextPP(value);
	const unsigned char *p = (const unsigned char *) VARDATA_ANY(t);
	int			len = VARSIZE_ANY_EXHDR(t);

	for (int i = 0; i < len; i++)
		if (p[i] < ' ' || p[i] == '"' || p[i] == '\\')
		{
			escape_json(out, text_to_cstring(t));
			return;
		}
	appendStringInfoChar(out, '"');
	appendBinaryStringInfo(out, (const char *) p, len);
	appendStringInfoChar(out, '"');
}

static void
AppendField(StringInfo out, int f, Datum value, bool isnull)
{
	char		date[MAXDATELEN + 1];

	if (f > 0)
		appendStringInfoString(out, ", ");
	escape_json(out, event_json_fields[f].name);
	appendStringInfoString(out, " : ");
	if (isnull)
		appendStringInfoString(out, "null");
	else if (event_json_fields[f].type == TEXTOID)
		AppendJsonString(out, value);
	else if (event_json_fields[f].type == TIMESTAMPTZOID)
		appendStringInfo(out, "\"%s\"", JsonEncodeDateTime(date, value, TIMESTAMPTZOID, NULL));
	else
	{
		Jsonb	   *payload = DatumGetJsonbP(value);

		(void) JsonbToCString(out, &payload->root, VARSIZE(payload));
	}
}

Datum
aggr_event_json(PG_FUNCTION_ARGS)
{
	HeapTupleHeader row = PG_GETARG_HEAPTUPLEHEADER(0);
	Oid			type = HeapTupleHeaderGetTypeId(row);
	int32		typmod = HeapTupleHeaderGetTypMod(row);
	EventJsonColumns *columns = fcinfo->flinfo->fn_extra;
	TupleDesc	desc = lookup_rowtype_tupdesc(type, typmod);
	HeapTupleData tuple;
	Datum	   *values;
	bool	   *nulls;
	StringInfoData out;

	if (columns == NULL)
		columns = fcinfo->flinfo->fn_extra =
			MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(EventJsonColumns));
	if (columns->type != type || columns->typmod != typmod || !ColumnsStillFit(columns, desc))
	{
		columns->type = InvalidOid; /* until every column is found */
		FindColumns(columns, desc, type, typmod);
	}
	tuple.t_len = HeapTupleHeaderGetDatumLength(row);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = row;

	values = palloc(desc->natts * sizeof(Datum));
	nulls = palloc(desc->natts * sizeof(bool));
	heap_deform_tuple(&tuple, desc, values, nulls);
	ReleaseTupleDesc(desc);

	initStringInfo(&out);
	appendStringInfoChar(&out, '{');
	for (int f = 0; f < EVENT_JSON_FIELDS; f++)
		AppendField(&out, f, values[columns->attnum[f] - 1], nulls[columns->attnum[f] - 1]);
	appendStringInfoChar(&out, '}');
	PG_RETURN_TEXT_P(cstring_to_text_with_len(out.data, out.len));
}
