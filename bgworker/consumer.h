/*
 * consumer.h
 *		The consumer background workers of broker mode (consumer.c).
 */
#ifndef AGGR_CONSUMER_H
#define AGGR_CONSUMER_H

extern void AggrRegisterConsumers(void);

#endif							/* AGGR_CONSUMER_H */
