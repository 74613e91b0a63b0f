-- Upgrades: 0.1 updated in place (ALTER EXTENSION aggr UPDATE) keeps its data
-- and ends up with exactly the objects of a fresh install of the current
-- version: every member's definition, columns, indexes, constraints, options,
-- privileges and comment are compared.

-- what makes up the installed extension, one row per member object: for a
-- relation its kind, owner, persistence, options, row security, replica
-- identity, privileges, columns (type, collation, nullability, identity,
-- default, storage, privileges, comment), indexes, constraints, triggers,
-- policies, sequence parameters and whether pg_dump dumps it; for a function
-- its definition, owner and privileges; the initial privileges of each
-- (pg_init_privs); and every comment
CREATE FUNCTION pg_temp.aggr_catalog() RETURNS TABLE (object text, facts text)
LANGUAGE sql AS $$
    WITH ext AS (SELECT oid, extconfig, extcondition FROM pg_extension WHERE extname = 'aggr'),
    -- a table's row type and array type come with the table (18 lists them as members)
    row_types AS (
        SELECT t.oid FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid WHERE c.relkind <> 'c'
        UNION ALL
        SELECT t.typarray FROM pg_type t JOIN pg_class c ON c.oid = t.typrelid WHERE c.relkind <> 'c')
    SELECT pg_describe_object(d.classid, d.objid, 0),
           concat_ws(E'\n',
               CASE d.classid
                   WHEN 'pg_proc'::regclass THEN
                       (SELECT concat_ws(E'\n', pg_get_functiondef(p.oid), p.proowner::regrole,
                                         coalesce(p.proacl::text, 'default acl'))
                        FROM pg_proc p WHERE p.oid = d.objid)
                   WHEN 'pg_class'::regclass THEN
                       (SELECT concat_ws(E'\n', c.relkind, c.relowner::regrole, c.relpersistence,
                                   c.reloptions::text, c.relacl::text, c.relrowsecurity,
                                   c.relforcerowsecurity, c.relreplident,
                                   (SELECT string_agg(concat_ws(' ', a.attname, format_type(a.atttypid, a.atttypmod),
                                                                a.attcollation::regcollation, a.attnotnull,
                                                                a.attidentity, a.attgenerated, a.attstorage,
                                                                a.attacl::text, pg_get_expr(ad.adbin, ad.adrelid),
                                                                col_description(c.oid, a.attnum)),
                                                      ', ' ORDER BY a.attnum)
                                    FROM pg_attribute a
                                    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                                   (SELECT string_agg(concat_ws(' ', pg_get_indexdef(i.indexrelid),
                                                                obj_description(i.indexrelid, 'pg_class')), E'\n' ORDER BY i.indexrelid::regclass::text)
                                    FROM pg_index i WHERE i.indrelid = c.oid),
                                   (SELECT string_agg(conname || ' ' || pg_get_constraintdef(k.oid), E'\n' ORDER BY conname)
                                    FROM pg_constraint k WHERE k.conrelid = c.oid),
                                   (SELECT string_agg(pg_get_triggerdef(g.oid), E'\n' ORDER BY g.tgname)
                                    FROM pg_trigger g WHERE g.tgrelid = c.oid AND NOT g.tgisinternal),
                                   (SELECT string_agg(concat_ws(' ', y.polname, y.polcmd, y.polpermissive,
                                                                pg_get_expr(y.polqual, y.polrelid)), E'\n' ORDER BY y.polname)
                                    FROM pg_policy y WHERE y.polrelid = c.oid),
                                   (SELECT concat_ws(' ', q.seqtypid::regtype, q.seqstart, q.seqincrement,
                                                     q.seqmax, q.seqmin, q.seqcache, q.seqcycle)
                                    FROM pg_sequence q WHERE q.seqrelid = c.oid),
                                   (SELECT 'dumped by pg_dump where ' ||
                                           coalesce(nullif(ext.extcondition[i], ''), 'always')
                                    FROM ext, generate_subscripts(ext.extconfig, 1) i
                                    WHERE ext.extconfig[i] = c.oid))
                        FROM pg_class c WHERE c.oid = d.objid)
                   WHEN 'pg_namespace'::regclass THEN
                       (SELECT concat_ws(E'\n', n.nspowner::regrole, coalesce(n.nspacl::text, 'default acl'))
                        FROM pg_namespace n WHERE n.oid = d.objid)
                   WHEN 'pg_type'::regclass THEN
                       (SELECT concat_ws(' ', t.typtype, format_type(t.oid, NULL), t.typowner::regrole)
                        FROM pg_type t WHERE t.oid = d.objid)
               END,
               (SELECT string_agg(concat_ws(' ', ip.objsubid, ip.privtype, ip.initprivs::text), E'\n'
                                   ORDER BY ip.objsubid, ip.privtype)
                FROM pg_init_privs ip WHERE ip.classoid = d.classid AND ip.objoid = d.objid),
               obj_description(d.objid, d.classid::regclass::name))
    FROM pg_depend d
    JOIN ext ON ext.oid = d.refobjid
    WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'
      AND NOT (d.classid = 'pg_type'::regclass AND d.objid IN (SELECT oid FROM row_types))
$$;

CREATE EXTENSION aggr VERSION '0.1';
-- the library of this version ingests into the old schema, before the
-- update, by the bulk path (no LOG line: no fallback) and by the statement
SET client_min_messages = log;
SELECT aggr_ingest('[{"topic": "u", "event_id": "1", "timestamp": 0, "source": "s"},
                     {"topic": "u", "event_id": "1", "timestamp": 0, "source": "s"}]');
SET aggr.bulk_ingest = off;
SELECT aggr_ingest('[{"topic": "u", "event_id": "2", "timestamp": 0, "source": "s"}]');
RESET aggr.bulk_ingest;
RESET client_min_messages;
CREATE ROLE regress_aggr_upgrade;
GRANT EXECUTE ON FUNCTION aggr_health() TO regress_aggr_upgrade;
ALTER EXTENSION aggr UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'aggr';
-- a grant made on 0.1 survives the update
SELECT has_function_privilege('regress_aggr_upgrade', 'aggr_health()', 'EXECUTE') AS grant_kept;
REVOKE EXECUTE ON FUNCTION aggr_health() FROM regress_aggr_upgrade;
DROP ROLE regress_aggr_upgrade;
SELECT extversion = (SELECT default_version FROM pg_available_extensions WHERE name = 'aggr') AS is_default
FROM pg_extension WHERE extname = 'aggr';

-- the data of 0.1 is still there and still counted
SELECT s -> 'received' AS received, s -> 'unique_processed' AS unique_processed,
       (SELECT count(*) FROM aggr.events) AS rows FROM aggr_stats() s;
SELECT aggr_health() ->> 'status' AS status, aggr_health() ->> 'mode' AS mode;

CREATE TEMP TABLE upgraded AS SELECT * FROM pg_temp.aggr_catalog();
DROP EXTENSION aggr;
CREATE EXTENSION aggr;
CREATE TEMP TABLE fresh AS SELECT * FROM pg_temp.aggr_catalog();

-- the snapshot covers every member (so an empty difference below means something)
SELECT count(*) AS members, count(*) FILTER (WHERE facts <> '') AS described FROM fresh;
SELECT object FROM fresh ORDER BY 1;

-- no difference: nothing only after the upgrade, nothing only in a fresh install
(SELECT 'only after upgrade' AS side, * FROM upgraded EXCEPT SELECT 'only after upgrade', * FROM fresh)
UNION ALL
(SELECT 'only in a fresh install', * FROM fresh EXCEPT SELECT 'only in a fresh install', * FROM upgraded)
ORDER BY 1, 2;

DROP EXTENSION aggr;
