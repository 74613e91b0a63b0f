/*
 * citus.h
 *		What Citus makes of this node (README, "Citus").  aggr ingests,
 *		consumes and expires on the coordinator only: seq is drawn from the
 *		coordinator's sequence, in the order readers page by, and a consumer
 *		slot's Redis lists are the cluster's, not a node's.  So a worker node
 *		refuses all three.  aggr_distribute() distributes aggr.events; the
 *		ingest core then uses the statement Citus plans well.
 */
#ifndef AGGR_CITUS_H
#define AGGR_CITUS_H

typedef struct AggrCitusRole
{
	bool		worker;			/* a Citus node that is not the coordinator */
	bool		distributed;	/* aggr.events is a distributed table */
} AggrCitusRole;

/* In a transaction; looked up once per transaction (SPI inside). */
extern AggrCitusRole AggrCitusRoleNow(void);

/* ERROR (0A000) on a Citus worker node; what: "aggr ingests", ... */
extern void AggrRequireNotCitusWorker(const char *what);

#endif							/* AGGR_CITUS_H */
