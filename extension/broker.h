/*
 * broker.h
 *		The publishing side of broker mode (broker.c): aggr_publish's events
 *		are pushed at commit.
 */
#ifndef AGGR_BROKER_H
#define AGGR_BROKER_H

#include "postgres.h"

#include "utils/jsonb.h"

extern void AggrBrokerInit(void);
extern void AggrEnqueueBatch(Jsonb *request, int nevents, const char *json, int len);
extern int64 AggrBrokerQueueDepth(char **error);

#endif							/* AGGR_BROKER_H */
