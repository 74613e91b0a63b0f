/*
 * json.h
 *		The publisher's JSON reader: a few top-level integer fields out of
 *		the server's answers (writing strings is common/'s AggrJsonAppendString).
 */
#ifndef AGGR_JSON_H
#define AGGR_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "util.h"

/* What looking up a top-level field found. */
typedef enum AggrJsonResult
{
	AGGR_JSON_OK,				/* found, and *value is set */
	AGGR_JSON_ABSENT,			/* well-formed object without that key */
	AGGR_JSON_WRONG_TYPE,		/* present, but not an integer in int64 range */
	AGGR_JSON_MALFORMED			/* not one well-formed JSON object */
} AggrJsonResult;

/* Deepest nesting AggrJsonGetInt accepts; deeper documents are malformed. */
#define AGGR_JSON_MAX_DEPTH 64

/*
 * Look up key among the members of the top-level object in json[0..len) (no
 * NUL terminator needed) and read it as an integer.  The whole document is
 * validated; if key appears more than once, the first occurrence wins.
 */
extern AggrJsonResult AggrJsonGetInt(const char *json, size_t len,
									 const char *key, int64_t *value);

/*
 * True when json[0..len) is one well-formed object whose top-level key holds
 * exactly the JSON text literal (say "\"unknown\"", quotes included).
 */
extern bool AggrJsonFieldIs(const char *json, size_t len, const char *key,
							const char *literal);

/*
 * The JSON text of a top-level key's value in json[0..len), as it stands
 * (a string keeps its quotes and escapes); *value points into json.
 */
extern AggrJsonResult AggrJsonGetRaw(const char *json, size_t len, const char *key,
									 const char **value, size_t *value_len);

#endif							/* AGGR_JSON_H */
