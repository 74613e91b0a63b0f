# Citus (README, "Citus"): aggr on a real cluster of one coordinator and two
# worker nodes on loopback, as a user deploys it.  The workers have aggr's
# files but do not preload it (one of them does, to prove its consumers and
# expiry worker stop there); the coordinator preloads citus and aggr.
#   - CREATE EXTENSION aggr on the coordinator reaches the workers;
#   - aggr_distribute(): its argument checked, refused on a worker, once
#     only, shards on both workers, the counters left on the coordinator;
#   - ingest exact (the demo's 20,000 events, 35 % duplicates), refused on a
#     worker with nothing changed; concurrent ingests of the same keys store
#     them once; aggr_events pages every event once, in seq order;
#   - the sidecar against the coordinator in direct mode while a worker node
#     restarts with -m immediate: 503s while it is down, nothing acknowledged
#     lost, counters exact;
#   - broker mode: the sidecar queues, consumers on the coordinator drain into
#     the distributed table, exact; the preloaded worker's consumers took
#     nothing (they stopped, saying why);
#   - retention: the coordinator's expiry worker expires the distributed
#     events, keys remembered within the dedup window, forgotten after it,
#     aggr_expire() by hand, counters exact;
#   - DROP EXTENSION aggr on the coordinator;
#   - aggr's pg_regress and isolation suites on the coordinator, each test's
#     aggr.events distributed (expected/*_1.out where Citus's plans differ).
use strict;
use warnings;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes qw(time usleep);
use POSIX qw(:sys_wait_h);
use File::Basename qw(dirname);
use lib 't';
use AggrTest qw(start_redis stop_redis redis_cmd demo_events event_batches
  check_invariants wait_for stats poll_stats_until wait_drained spawn check_ledger);
use SidecarTest qw(start_sidecar stop_sidecar http);

my $publisher = $ENV{AGGR_PUBLISHER} // 'publisher/aggr-publisher';
my $redis = start_redis();

# A node listening on 127.0.0.1 (Citus connects to its nodes over TCP).
sub citus_node
{
    my ($name, %conf) = @_;
    my $node = PostgreSQL::Test::Cluster->new($name);
    $node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
    $node->append_conf('pg_hba.conf', "host all all 127.0.0.1/32 trust\n");
    %conf = (
        shared_preload_libraries => 'citus',
        listen_addresses => '127.0.0.1',
        shared_buffers => '64MB',
        log_min_messages => 'log',
        'citus.max_cached_conns_per_worker' => 4,
        %conf);
    $node->append_conf('postgresql.conf',
        join('', map { "$_ = '$conf{$_}'\n" } sort keys %conf));
    $node->start;
    $node->safe_psql('postgres', 'CREATE EXTENSION citus');
    return $node;
}

# restart_after_crash: with assertions (the PostgreSQL 18 build), Citus 14.0.1
# fails Assert("sock != -1") in multi_copy.c when a worker node dies in the
# middle of a COPY to it; the coordinator then recovers like any crashed
# server, which the fault scenario below must survive too
my $coord = citus_node('coordinator', shared_preload_libraries => 'citus,aggr',
    restart_after_crash => 'on');
my $w1 = citus_node('worker1');
# this worker preloads aggr, names the broker and sets a retention: its
# consumers and expiry worker must not run
my $w2 = citus_node('worker2', shared_preload_libraries => 'citus,aggr',
    'aggr.broker_url' => $redis->{url}, 'aggr.worker_count' => 2, 'aggr.retention' => '1h');
$coord->safe_psql('postgres',
    "SELECT citus_set_coordinator_host('127.0.0.1', " . $coord->port . ")");
$coord->safe_psql('postgres', "SELECT citus_add_node('127.0.0.1', " . $_->port . ")")
  for $w1, $w2;

# (the error's SQLSTATE and message, for is())
sub sql_error
{
    my ($node, $sql) = @_;
    my ($out, $err) = ('', '');
    $node->psql('postgres', "\\set VERBOSITY verbose\n$sql", stdout => \$out, stderr => \$err);
    return $err =~ /ERROR:\s+(\w{5}): ([^\n]*)/ ? "$1 $2" : "no error: $out";
}

# --- the extension and aggr_distribute() ---
$coord->safe_psql('postgres', 'CREATE EXTENSION aggr');
is($w1->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'aggr'"),
    $coord->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'aggr'"),
    'CREATE EXTENSION aggr on the coordinator reached a worker that does not preload aggr');
like(sql_error($coord, 'SELECT aggr_distribute(0)'), qr/^22023 shard_count must be between 1 and 1024/,
    'aggr_distribute(0): 22023');
like(sql_error($w1, 'SELECT aggr_distribute()'), qr/^0A000 aggr_distribute runs on the Citus coordinator/,
    'aggr_distribute() on a worker node: 0A000');
$coord->safe_psql('postgres', 'SELECT aggr_distribute()');
like(sql_error($coord, 'SELECT aggr_distribute(4)'), qr/^55000 aggr.events is distributed already/,
    'a second aggr_distribute(): 55000, nothing changed');
is($coord->safe_psql('postgres', q{
    SELECT count(*) || ' shards on ' || count(DISTINCT p.groupid) || ' nodes'
    FROM pg_dist_shard s JOIN pg_dist_placement p USING (shardid)
    WHERE s.logicalrelid = 'aggr.events'::regclass}),
    '4 shards on 2 nodes', 'aggr_distribute() by default: 4 shards (two per worker), spread over both workers');
is($coord->safe_psql('postgres', q{
    SELECT string_agg(logicalrelid::text, ',') FROM pg_dist_partition
    WHERE logicalrelid::text LIKE 'aggr.%'}),
    'aggr.events', 'only aggr.events is distributed; counters and the rest stay on the coordinator');

# --- ingest ---
my @events = demo_events(20000, 0.35, 'c');
my $n = 0;
for my $batch (event_batches(500, @events))
{
    $coord->safe_psql('postgres', "SELECT aggr_ingest(\$j\$$batch\$j\$)");
}
check_invariants($coord, 'the demo ingested on the coordinator',
    received => 20000, unique => 13000, duplicates => 7000);
my %per_worker = map { split /\|/ } split /\n/, $coord->safe_psql('postgres', q{
    SELECT nodeport, sum(result::bigint) FROM run_command_on_shards('aggr.events', 'SELECT count(*) FROM %s')
    JOIN pg_dist_shard_placement USING (shardid) GROUP BY nodeport});
is(scalar(keys %per_worker), 2, 'events on both workers');
ok((grep { $_ > 4000 } values %per_worker) == 2, 'spread evenly by event_id: ' . join(' + ', values %per_worker));

like(sql_error($w1, q{SELECT aggr_ingest('{"topic": "w", "event_id": "1", "timestamp": 0, "source": "w"}')}),
    qr/^0A000 aggr ingests only on the Citus coordinator/, 'aggr_ingest on a worker node: 0A000');
like(sql_error($w1, q{SELECT aggr_publish('{"topic": "w", "event_id": "1", "timestamp": 0, "source": "w"}')}),
    qr/^0A000 aggr ingests only on the Citus coordinator/, 'aggr_publish on a worker node: 0A000');
like(sql_error($w2, q{SELECT aggr_publish('{"topic": "w", "event_id": "1", "timestamp": 0, "source": "w"}')}),
    qr/^0A000 aggr ingests only on the Citus coordinator/,
    'aggr_publish on a worker node with aggr.broker_url set: 0A000');
is(redis_cmd($redis, 'LLEN', 'aggregator:events'), 0, 'and nothing was queued');
check_invariants($coord, 'after the refused calls', received => 20000, unique => 13000);

# concurrent ingests of the same new keys, from two sessions: stored once
my $dir = PostgreSQL::Test::Utils::tempdir('citus');
my @same = demo_events(4000, 0, 'same');
open(my $fh, '>', "$dir/same.sql") or die;
print $fh "SELECT aggr_ingest(\$j\$$_\$j\$);\n" for event_batches(200, @same);
close $fh;
my @psql = map {
    spawn("$dir/same$_.log", 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
        '-d', $coord->connstr('postgres'), '-f', "$dir/same.sql")
} 1, 2;
for my $pid (@psql) { waitpid($pid, 0); is($?, 0, 'a concurrent session ingested without an error'); }
check_invariants($coord, 'two sessions ingesting the same 4,000 keys',
    received => 28000, unique => 17000, duplicates => 11000);

# aggr_events pages every event once, in seq order
my ($after, $paged, $ordered, %seen) = (0, 0, 1);
while (1)
{
    my $page = $coord->safe_psql('postgres',
        "SELECT seq, topic || '/' || event_id FROM aggr_events(NULL, 1000, $after)");
    last if $page eq '';
    for (split /\n/, $page)
    {
        my ($seq, $key) = split /\|/;
        $ordered = 0 if $seq <= $after;
        $seen{$key}++;
        $after = $seq;
        $paged++;
    }
}
is($paged, 17000, 'aggr_events paged all 17,000 events');
is(scalar(keys %seen), 17000, 'each once');
ok($ordered, 'in seq order');

# --- the sidecar in direct mode; a worker node restarts mid-stream ---
my $sidecar = start_sidecar($coord);
my $url = "http://127.0.0.1:$sidecar->{port}";
my $pub = spawn("$dir/direct.log", $publisher, '--url', $url, '--events', 20000,
    '--dup-ratio', '0.35', '--batch', 100, '--concurrency', 2, '--rate', 4000,
    '--seed', 7, '--source', 'citus-direct', '--ledger', "$dir/direct.tsv",
    '--max-retry-time', 120, '--timeout', 20, '--quiet');
wait_for(sub { $coord->safe_psql('postgres', "SELECT count(*) FROM aggr.events WHERE source = 'citus-direct'") > 2000 }, 60)
  or die 'the direct stream did not start';
$w1->stop('immediate');
sleep 2;
$w1->start;
waitpid($pub, 0);
is($? >> 8, 0, 'the publisher had every event acknowledged in the end');
# a commit whose COMMIT PREPARED did not reach the node as it went down is
# finished by Citus's recovery (every citus.recover_2pc_interval; here now)
$coord->safe_psql('postgres', 'SELECT recover_prepared_transactions()');
my $ledger = check_ledger($coord, 'citus-direct', "$dir/direct.tsv");
is($ledger->{lost}, 0, "direct mode, worker restarted: 0 of $ledger->{acknowledged} acknowledged events lost");
is($ledger->{unexpected}, 0, 'and none stored that was never sent');
my $metrics = http($sidecar->{port}, 'GET', '/metrics')->{body};
my ($unavailable) = $metrics =~ /aggr_http_requests_total\{route="\/publish",status="503"\} (\d+)/;
ok(($unavailable // 0) > 0, '503s while the worker was down: ' . ($unavailable // 0));
my $s = check_invariants($coord, 'direct mode through a worker restart');
ok($s->{received} >= 28000 + 20000 && $s->{received} <= 28000 + 20000 + $ledger->{max_received} - $ledger->{min_received},
    "received $s->{received}: each acknowledged event once, plus at most the attempts whose answer was lost");
stop_sidecar($sidecar);

# --- broker mode: consumers on the coordinator only ---
$coord->append_conf('postgresql.conf', "aggr.broker_url = '$redis->{url}'\naggr.worker_count = 2\n");
$coord->restart;
my $before = stats($coord);
$sidecar = start_sidecar($coord);
$url = "http://127.0.0.1:$sidecar->{port}";
system($publisher, '--url', $url, '--events', 20000, '--dup-ratio', '0.35',
    '--seed', 11, '--source', 'citus-broker', '--wait-ready', 30, '--quiet');
is($? >> 8, 0, 'broker mode: 20,000 events accepted by the sidecar');
ok(wait_drained($coord, $redis, 120), 'the coordinator\'s consumers drained the queue');
check_invariants($coord, 'broker mode into the distributed table',
    received => $before->{received} + 20000,
    unique => $before->{unique_processed} + 13000);
is(http($sidecar->{port}, 'GET', '/stats')->{status}, 200, 'GET /stats through the sidecar');
stop_sidecar($sidecar);
my $w2_log = slurp_file($w2->logfile);
ok($w2_log =~ /aggr consumer 1: this server is a Citus worker node; consumers run on the coordinator only, so this one stops/,
    'the preloaded worker node\'s consumers stopped, saying why');
ok($w2_log =~ /aggr expiry: this server is a Citus worker node/, 'and so did its expiry worker');
is($w2->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type LIKE 'aggr%'}),
    0, 'no aggr background worker runs on the worker node');

# --- retention on the distributed table: the expiry worker on the coordinator ---
$before = stats($coord);
# the oldest event locked on its shard for a few seconds: the worker's batch
# meets the lock there and gives up after its lock_timeout (1 s), sent to the
# node with the batch, instead of waiting out the lock with aggr.expiry held
my ($old_topic, $old_id) = split /\|/,
  $coord->safe_psql('postgres', 'SELECT topic, event_id FROM aggr.events ORDER BY seq LIMIT 1');
my $locker = spawn("$dir/locker.log", 'psql', '-X', '-d', $coord->connstr('postgres'), '-c',
    "BEGIN; SELECT 1 FROM aggr.events WHERE topic = '$old_topic' AND event_id = '$old_id' FOR UPDATE;"
      . " SELECT pg_sleep(4); COMMIT");
wait_for(sub { -s "$dir/locker.log" || $coord->safe_psql('postgres',
    q{SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%FOR UPDATE%pg_sleep%' AND wait_event = 'PgSleep'}) > 0 }, 30)
  or die 'the locker did not start';
$coord->safe_psql('postgres', "ALTER SYSTEM SET aggr.retention = '1s'; SELECT pg_reload_conf()");
# the expiry worker's transactions while the lock is held: one that waited
# the lock out would be a single one
my %batches;
while (waitpid($locker, WNOHANG) == 0)
{
    my $xact = $coord->safe_psql('postgres',
        q{SELECT xact_start FROM pg_stat_activity WHERE backend_type = 'aggr expiry' AND xact_start IS NOT NULL});
    $batches{$xact} = 1 if $xact ne '';
    usleep(100_000);
}
is($?, 0, 'a session held the oldest event locked on its shard for 4 s meanwhile');
cmp_ok(scalar(keys %batches), '>=', 2,
    'the expiry worker\'s batches gave up on the locked row after their lock_timeout, sent to the node');
my $all_expired = poll_stats_until($coord, sub { $_[0]{expired} == $_[0]{unique_processed} }, 120);
is($all_expired->{expired}, $before->{unique_processed}, "every event expired: $all_expired->{expired}");
check_invariants($coord, 'after expiry', received => $before->{received}, expired => $before->{unique_processed});
is($coord->safe_psql('postgres', 'SELECT count(*) FROM aggr_events()'), 0, 'aggr_events returns no expired event');
# the demo's first batch again: its keys are remembered (aggr.dedup_window forever)
my ($first) = event_batches(500, @events);
is(decode_json($coord->safe_psql('postgres', "SELECT aggr_ingest(\$j\$$first\$j\$)"))->{unique}, 0,
    'expired events re-sent within the dedup window: duplicates');
$coord->safe_psql('postgres', "ALTER SYSTEM SET aggr.dedup_window = 0; SELECT pg_reload_conf()");
ok(wait_for(sub { $coord->safe_psql('postgres', 'SELECT count(*) FROM aggr.events') == 0 }, 120),
    'aggr.dedup_window = 0: every tombstone deleted');
$coord->safe_psql('postgres', 'ALTER SYSTEM RESET aggr.retention; SELECT pg_reload_conf()');
my $resent = decode_json($coord->safe_psql('postgres', "SELECT aggr_ingest(\$j\$$first\$j\$)"));
my %first_keys = map { my $e = decode_json($_); ("$e->{topic}/$e->{event_id}" => 1) } @events[ 0 .. 499 ];
is($resent->{unique}, scalar(keys %first_keys), 're-sent after the window: each key stored as new');
is($coord->safe_psql('postgres', "SELECT aggr_expire('0 s')"), $resent->{unique},
    'aggr_expire() by hand on the distributed table');
check_invariants($coord, 'after forgetting and aggr_expire()');
$coord->safe_psql('postgres', 'ALTER SYSTEM RESET aggr.dedup_window; SELECT pg_reload_conf()');

# --- dropping the extension ---
$coord->safe_psql('postgres', 'DROP EXTENSION aggr');
is($coord->safe_psql('postgres', "SELECT count(*) FROM pg_dist_partition WHERE logicalrelid::text LIKE 'aggr.%'"),
    0, 'DROP EXTENSION aggr drops the distributed table');
is($w1->safe_psql('postgres', "SELECT count(*) FROM pg_extension WHERE extname = 'aggr'"),
    0, 'and the extension is gone from the workers');

# --- aggr's SQL suites on the cluster, aggr.events distributed ---
# An event trigger distributes aggr.events when a test runs CREATE EXTENSION
# aggr (sequential mode: Citus runs no extension command after a parallel
# operation in one transaction), and isolationtester learns of waits on the
# workers from Citus's own function.  Not run here: upgrade (it installs 0.1,
# which has no aggr_distribute(), and compares the update with a fresh
# install, which the trigger would distribute).
$coord->append_conf('postgresql.conf', "aggr.broker_url = ''\n");
$coord->restart;
$coord->safe_psql('postgres', q{
    CREATE TABLE public.aggr_test_distributions (n int);
    INSERT INTO public.aggr_test_distributions VALUES (0);
    CREATE FUNCTION public.aggr_test_distribute() RETURNS event_trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT FROM pg_proc WHERE proname = 'aggr_distribute')
           AND NOT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid::text = 'aggr.events') THEN
            SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
            PERFORM aggr_distribute();
            UPDATE public.aggr_test_distributions SET n = n + 1;
        END IF;
    END $$;
    CREATE EVENT TRIGGER aggr_test_distribute ON ddl_command_end WHEN TAG IN ('CREATE EXTENSION')
        EXECUTE FUNCTION public.aggr_test_distribute();
    ALTER FUNCTION pg_catalog.pg_isolation_test_session_is_blocked(integer, integer[])
        RENAME TO old_pg_isolation_test_session_is_blocked;    -- the name Citus's calls
    ALTER FUNCTION pg_catalog.citus_isolation_test_session_is_blocked(integer, integer[])
        RENAME TO pg_isolation_test_session_is_blocked;});
my $regress_dir = PostgreSQL::Test::Utils::tempdir('citus_regress');
# Each spec alone, then the SQL tests: every spec's permutation, and every
# SQL test, creates aggr once, so the trigger's count says each ran on a
# distributed aggr.events.  (Both in database postgres: the specs first,
# since they leave nothing behind.)
my $isolation = dirname($ENV{PG_REGRESS}) . '/../isolation/pg_isolation_regress';
my @suites = map {
    my $spec = $_;
    [ $isolation, scalar(grep { /^permutation / } split /\n/, slurp_file("specs/$spec.spec")), $spec ]
} qw(ingest_race stats_race gapless_paging expire_race);
my @sql_tests = qw(validate ingest ndjson query stats expire citus privileges);
push @suites, [ $ENV{PG_REGRESS}, scalar(@sql_tests), @sql_tests ];
for my $suite (@suites)
{
    my ($program, $creates, @tests) = @$suite;
    $coord->safe_psql('postgres', 'UPDATE public.aggr_test_distributions SET n = 0');
    my $ok = run_log([ $program, '--host=' . $coord->host, '--port=' . $coord->port,
        '--use-existing', '--dbname=postgres', '--inputdir=.', "--outputdir=$regress_dir",
        '--bindir=' . $coord->config_data('--bindir'), @tests ]);
    ok($ok, 'on the Citus coordinator, aggr.events distributed: ' . join(' ', @tests));
    diag(slurp_file("$regress_dir/regression.diffs")) if !$ok && -f "$regress_dir/regression.diffs";
    is($coord->safe_psql('postgres', 'SELECT n FROM public.aggr_test_distributions'),
        $creates, "and each of its $creates CREATE EXTENSION aggr distributed aggr.events");
}

$_->stop for $coord, $w1, $w2;
stop_redis($redis);
done_testing();
