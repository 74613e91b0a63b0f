/*
 * util.h
 *		Small helpers every part of aggr-publisher uses: the clocks, and
 *		(from common/) allocation, the growable buffer and JSON escaping.
 */
#ifndef AGGR_UTIL_H
#define AGGR_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "../common/aggr_common.h"

/* Monotonic milliseconds (for durations) and Unix wall-clock milliseconds. */
extern double AggrNowMs(void);
extern int64_t AggrWallMs(void);

/* True when s can stand in an HTTP header: no control characters. */
extern bool AggrHeaderValueOk(const char *s);

#endif							/* AGGR_UTIL_H */
