/*
 * expiry.h
 *		The expiry background worker (expiry.c), registered whenever aggr is
 *		preloaded: it runs retention's batches (extension/expire.h) in
 *		aggr.database.
 */
#ifndef AGGR_EXPIRY_H
#define AGGR_EXPIRY_H

extern void AggrRegisterExpiry(void);

#endif							/* AGGR_EXPIRY_H */
