-- aggr_ingest of the same batch the raw ceiling inserts.
\set b 1 + :client_id + 2 * :k
\set k :k + 1
SELECT aggr_ingest(body::jsonb) FROM bench_batches WHERE id = :b;
