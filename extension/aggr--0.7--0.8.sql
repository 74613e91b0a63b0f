/*
 * aggr--0.7--0.8.sql: from 0.7 to 0.8.
 * - aggr_events_page() plans its page by the index, without JIT, whatever
 *   the statistics say (a table never analyzed made it scan the table and
 *   sort, or compile with JIT: 35-95 ms a page where the index takes 1 ms).
 */

\echo Use "ALTER EXTENSION aggr UPDATE TO '0.8'" to load this file. \quit

ALTER FUNCTION aggr_events_page(text, integer, bigint)
    SET enable_seqscan = off SET enable_bitmapscan = off SET jit = off;
