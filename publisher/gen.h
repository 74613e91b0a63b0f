/*
 * gen.h
 *		Deterministic event generation: the whole stream of a run, as ready
 *		request bodies, built before the timed part starts.
 */
#ifndef AGGR_GEN_H
#define AGGR_GEN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits that keep every index and offset in 32 bits. */
#define AGGR_GEN_MAX_EVENTS 100000000L
#define AGGR_GEN_MAX_BATCH 100000
#define AGGR_GEN_MAX_TOPICS 100000
#define AGGR_GEN_MAX_SOURCE 128

typedef struct AggrGenOptions
{
	uint64_t	seed;
	long		events;			/* total events to send */
	double		dup_ratio;		/* share of re-sends, in [0, 1) */
	int			batch_size;		/* events per request */
	int			topics;			/* topic_0 ... topic_<topics-1> */
	const char *source;
	int64_t		base_time_ms;	/* timestamp of the newest event, Unix ms */
	bool		ndjson;			/* bodies as one event per line, not an array */
} AggrGenOptions;

/* One event in send order: which unique event it copies, and its bytes. */
typedef struct AggrEvent
{
	uint32_t	unique;
	uint32_t	offset;			/* where its JSON starts in its batch body */
	uint32_t	length;
} AggrEvent;

/* One request: consecutive events of the send order, as a JSON array or NDJSON. */
typedef struct AggrBatch
{
	char	   *body;
	size_t		length;
	long		first;			/* index of its first event in send order */
	int			count;
} AggrBatch;

typedef struct AggrStream
{
	uint64_t	seed;
	int			topics;
	int			batch_size;
	long		n_events;
	long		n_unique;
	long		n_duplicates;
	AggrEvent  *events;			/* n_events, in send order */
	AggrBatch  *batches;
	int			n_batches;
} AggrStream;

/* How many of events are re-sends for a ratio: round(events * ratio). */
extern long AggrGenDuplicates(long events, double ratio);

/* Build the stream; false with a message in err if the options are invalid. */
extern bool AggrGenBuild(const AggrGenOptions *opts, AggrStream *stream,
						 char *err, size_t errlen);
extern void AggrGenFree(AggrStream *stream);

/* The bytes of event i (send order). */
extern const char *AggrGenEventJson(const AggrStream *stream, long i, size_t *len);

/* Topic and event_id of a unique event (buffers of AGGR_GEN_KEY_LEN). */
#define AGGR_GEN_KEY_LEN 48
extern void AggrGenEventKey(const AggrStream *stream, uint32_t unique,
							char *topic, char *event_id);

/* The PRNG the generator uses, also handy for jitter: splitmix64. */
extern uint64_t AggrRandNext(uint64_t *state);
extern double AggrRandUnit(uint64_t *state);	/* uniform in [0, 1) */

#endif							/* AGGR_GEN_H */
