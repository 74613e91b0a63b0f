/*
 * fuzz_json.c
 *		libFuzzer harness for the publisher's handling of untrusted bytes:
 *		the server-answer field extractor and the JSON string writer.
 *
 * Properties checked beyond "no crash, no out-of-bounds read" (ASan/UBSan):
 * the extractor returns one of its four results, and whatever bytes are
 * escaped, the result embedded in an object is a well-formed JSON string.
 * Build and run with "make fuzz" (clang); the seed corpus is fuzz-corpus/.
 */
#include <stdint.h>
#include <stdlib.h>

#include "json.h"
#include "util.h"

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const keys[] = {
		"accepted", "unique", "duplicates", "received", "unique_processed",
		"duplicate_dropped", "queue_depth", "status", "worker_count"
	};
	const char *json = (const char *) data;
	AggrBuf		buf;
	int64_t		v;

	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
	{
		AggrJsonResult r = AggrJsonGetInt(json, size, keys[i], &v);

		if (r != AGGR_JSON_OK && r != AGGR_JSON_ABSENT &&
			r != AGGR_JSON_WRONG_TYPE && r != AGGR_JSON_MALFORMED)
			abort();
	}

	AggrBufInit(&buf, 0);
	AggrBufAppendStr(&buf, "{\"k\":");
	AggrJsonAppendString(&buf, json, size);
	AggrBufAppendStr(&buf, "}");
	if (AggrJsonGetInt(buf.data, buf.len, "k", &v) != AGGR_JSON_WRONG_TYPE)
		abort();
	AggrBufFree(&buf);
	return 0;
}
