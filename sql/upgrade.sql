-- Upgrades: 0.1 updated in place (ALTER EXTENSION aggr UPDATE) keeps its data
-- and ends up with exactly the objects of a fresh install of the current
-- version: every member's definition, columns, indexes, constraints, options,
-- privileges and comment are compared.

-- what makes up the installed extension, one row per member object
CREATE FUNCTION pg_temp.aggr_catalog() RETURNS TABLE (object text, facts text)
LANGUAGE sql AS $$
    SELECT pg_describe_object(d.classid, d.objid, 0),
           concat_ws(E'\n',
               CASE d.classid
                   WHEN 'pg_proc'::regclass THEN
                       (SELECT pg_get_functiondef(p.oid) || coalesce(p.proacl::text, 'default acl')
                        FROM pg_proc p WHERE p.oid = d.objid)
                   WHEN 'pg_class'::regclass THEN
                       (SELECT concat_ws(E'\n', c.relkind, c.reloptions::text, c.relacl::text,
                                   (SELECT string_agg(concat_ws(' ', a.attname, format_type(a.atttypid, a.atttypmod),
                                                                a.attcollation::regcollation, a.attnotnull,
                                                                a.attidentity, pg_get_expr(ad.adbin, ad.adrelid)),
                                                      ', ' ORDER BY a.attnum)
                                    FROM pg_attribute a
                                    LEFT JOIN pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
                                    WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
                                   (SELECT string_agg(pg_get_indexdef(i.indexrelid), E'\n' ORDER BY 1)
                                    FROM pg_index i WHERE i.indrelid = c.oid),
                                   (SELECT string_agg(conname || ' ' || pg_get_constraintdef(k.oid), E'\n' ORDER BY 1)
                                    FROM pg_constraint k WHERE k.conrelid = c.oid))
                        FROM pg_class c WHERE c.oid = d.objid)
                   WHEN 'pg_namespace'::regclass THEN
                       (SELECT coalesce(n.nspacl::text, 'default acl') FROM pg_namespace n WHERE n.oid = d.objid)
               END,
               obj_description(d.objid, d.classid::regclass::name))
    FROM pg_depend d
    JOIN pg_extension e ON e.oid = d.refobjid
    WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'aggr'
      -- a table's row type and array type come with the table (18 lists them as members)
      AND NOT EXISTS (SELECT FROM pg_type t
                      WHERE d.classid = 'pg_type'::regclass AND t.oid = d.objid
                        AND (t.typrelid <> 0 OR t.typelem <> 0))
$$;

CREATE EXTENSION aggr VERSION '0.1';
SELECT aggr_ingest('[{"topic": "u", "event_id": "1", "timestamp": 0, "source": "s"},
                     {"topic": "u", "event_id": "1", "timestamp": 0, "source": "s"}]');
ALTER EXTENSION aggr UPDATE;
SELECT extversion FROM pg_extension WHERE extname = 'aggr';
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
