/*
 * citus.c
 *		Which role Citus gives this node, for citus.h.
 */
#include "postgres.h"

#include "aggr.h"
#include "citus.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "utils/lsyscache.h"
#include "utils/resowner.h"

/* the answer for one local transaction: ingest asks once per batch */
static AggrCitusRole role_cached;
static LocalTransactionId role_cached_in = InvalidLocalTransactionId;

/*
 * A coordinator, and a node not yet added to a cluster, are group 0
 * (pg_dist_local_group); every worker node has its own group.
 */
static const char *const role_sql =
"SELECT (SELECT groupid FROM pg_catalog.pg_dist_local_group) <> 0,"
"  EXISTS (SELECT FROM pg_catalog.pg_dist_partition"
"          WHERE logicalrelid = 'aggr.events'::pg_catalog.regclass)";

AggrCitusRole
AggrCitusRoleNow(void)
{
	AggrCitusRole role = {false, false};
	bool		isnull;

	if (role_cached_in == AggrLocalTransactionId())
		return role_cached;
	Assert(IsTransactionState());
	if (OidIsValid(get_extension_oid("citus", true)))
	{
		Oid			events = get_relname_relid("events", get_namespace_oid("aggr", false));

		/*
		 * aggr_distribute() holds an AccessExclusiveLock until it commits:
		 * the answer, read after this lock with a new snapshot, holds for the
		 * rest of the transaction.  The transaction's lock, not a
		 * subtransaction's: one rolled back (a consumer's element-by-element
		 * replay) must not let aggr_distribute() in under the cached answer.
		 */
		if (OidIsValid(events))
		{
			ResourceOwner owner = CurrentResourceOwner;

			CurrentResourceOwner = TopTransactionResourceOwner;
			LockRelationOid(events, AccessShareLock);
			CurrentResourceOwner = owner;
		}
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute(role_sql, false, 1) != SPI_OK_SELECT || SPI_processed != 1)
			elog(ERROR, "could not read Citus's metadata");
		role.worker = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
												 SPI_tuptable->tupdesc, 1, &isnull)) && !isnull;
		role.distributed = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, 2, &isnull));
		SPI_finish();
	}
	role_cached = role;
	role_cached_in = AggrLocalTransactionId();
	return role;
}

void
AggrRequireNotCitusWorker(const char *what)
{
	if (AggrCitusRoleNow().worker)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("%s only on the Citus coordinator, and this server is a Citus worker node", what),
				 errdetail("aggr ingests, consumes and expires on the coordinator: events take their seq there, in the order aggr_events pages by."),
				 errhint("Connect to the coordinator.")));
}
