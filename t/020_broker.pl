# Broker mode end to end, with a real redis-server (appendonly, fsync always):
# the demo's numbers exact; consumers SIGTERMed every half second; Redis
# SIGKILLed and PostgreSQL crashed mid-stream; a consumer dying just before
# COMMIT, between COMMIT and the acknowledgement, and after it; queue bound,
# broker down, rollback, poison elements, adoption of an orphaned processing
# list; a publish in a database the consumers do not serve.  Every scenario
# ends with the invariants and exact counts.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use lib 't';
use AggrTest qw(new_node start_redis stop_redis redis_cmd demo_events event_batches
  check_invariants wait_for stats publish wait_drained consumer_pids);

my $redis = start_redis();
my $node  = new_node(
    'broker',
    'aggr.broker_url'    => $redis->{url},
    'aggr.worker_count'  => 2,
    'aggr.poll_interval' => '200ms',
    'aggr.queue_maxsize' => 1000000);
wait_for(sub { consumer_pids($node) == 2 }, 30) or die 'consumers did not start';

my %total = (received => 0, unique => 0, duplicates => 0);

# Publishes the demo's events (prefix makes them new), runs $fault->($i)
# before batch $i, waits for the queue to drain, checks exact totals.
sub scenario
{
    my ($name, $n, $fault, %opt) = @_;
    my @batches = event_batches($opt{batch} // 500, demo_events($n, 0.35, "$name-"));
    for my $i (0 .. $#batches)
    {
        $fault->($i) if $fault;
        my $answer = publish($node, $batches[$i]);
        like($answer, qr/"accepted": \d+/, "$name: batch $i queued") if $i == 0;
    }
    $opt{after}->() if $opt{after};
    ok(wait_drained($node, $redis), "$name: queue drained");
    my $dups = int($n * 0.35 + 0.5);
    $total{received}   += $n;
    $total{unique}     += $n - $dups;
    $total{duplicates} += $dups;
    wait_for(sub { stats($node)->{received} >= $total{received} }, 60);
    return check_invariants($node, $name, %total);
}

# 1. the demo: 20,000 events, 35 % duplicates, batches of 500
my $s = scenario('demo', 20000, undef);
is($s->{queue_depth}, 0, 'demo: queue_depth 0');
is($s->{worker_count}, 2, 'demo: two live consumers');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE application_name IN ('aggr consumer 1', 'aggr consumer 2')}),
    2, 'consumers are named in pg_stat_activity');

# 2. every consumer SIGTERMed every half second while publishing and draining
$node->safe_psql('postgres', q{ALTER SYSTEM SET aggr.batch_size = 50; SELECT pg_reload_conf()});
my $kills = 0;
my $next_kill = time();
my $killer = sub {
    return if time() < $next_kill;
    $kills += kill('TERM', consumer_pids($node));
    $next_kill = time() + 0.5;
};
scenario('sigterm', 20000, sub { $killer->(); usleep(20_000) },
    batch => 250,
    after => sub { for (1 .. 6) { $killer->(); usleep(500_000) } });
cmp_ok($kills, '>=', 10, "sigterm: consumers were terminated $kills times");
$node->safe_psql('postgres', q{ALTER SYSTEM RESET aggr.batch_size; SELECT pg_reload_conf()});

# 3. Redis SIGKILLed mid-stream: a publish gets the broker SQLSTATE, nothing
#    half-queued; restarted on its append-only file, nothing acknowledged lost
scenario('redis-kill', 10000, sub {
    my ($i) = @_;
    return unless $i == 8;
    stop_redis($redis, 'KILL');
    my ($ret, $out, $err) = $node->psql('postgres',
        "\\set VERBOSITY verbose\nSELECT aggr_publish('{\"topic\": \"x\", \"event_id\": \"down\", \"timestamp\": 0, \"source\": \"s\"}')");
    like($err, qr/ERROR:\s+08006: could not queue 1 events on the broker/, 'redis-kill: broker down is SQLSTATE 08006');
    my $h = $node->safe_psql('postgres', 'SELECT aggr_health()');
    like($h, qr/"status": "down"/, 'redis-kill: health is down');
    like($h, qr/"broker": "down"/, 'redis-kill: health names the broker');
    start_redis($redis);
});

# 4. PostgreSQL stopped with -m immediate and restarted mid-stream
scenario('pg-immediate', 10000, sub {
    my ($i) = @_;
    return unless $i == 10;
    $node->stop('immediate');
    $node->start;
});
wait_for(sub { consumer_pids($node) == 2 }, 30);

# 5. deterministic crash points of the batch protocol
for my $point (qw(before_commit after_commit after_ack))
{
    my $log_offset = -s $node->logfile;
    $node->safe_psql('postgres', "ALTER SYSTEM SET aggr.test_crash_point = '$point'; SELECT pg_reload_conf()");
    # small requests: several batches, so one is sure to meet the crash point
    scenario("crash-$point", 1000, undef, batch => 100, after => sub {
        ok(wait_for(sub { slurp_file($node->logfile, $log_offset) =~ /exiting at test crash point/ }, 30),
            "crash-$point: a consumer died at the crash point");
        $node->safe_psql('postgres', 'ALTER SYSTEM RESET aggr.test_crash_point; SELECT pg_reload_conf()');
    });
    like(slurp_file($node->logfile, $log_offset), qr/was committed before; acknowledging it only/,
        'crash-after_commit: the redelivered batch was recognised, not counted again')
      if $point eq 'after_commit';
}

# 6. the queue bound: a publish that would exceed it is refused whole, and
#    a reload (SIGHUP) changes the bound
$node->safe_psql('postgres', q{ALTER SYSTEM SET aggr.queue_maxsize = 10; SELECT pg_reload_conf()});
my $eleven = '[' . join(',', map { qq({"topic": "bound", "event_id": "$_", "timestamp": 0, "source": "s"}) } 1 .. 11) . ']';
my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT aggr_publish('$eleven')");
like($err, qr/ERROR:\s+53000: queue "aggregator:events" is full/, 'bound: queue full is SQLSTATE 53000');
is(redis_cmd($redis, 'LLEN', 'aggregator:events'), 0, 'bound: nothing was queued');
$node->safe_psql('postgres', q{ALTER SYSTEM SET aggr.queue_maxsize = 20; SELECT pg_reload_conf()});
wait_for(sub { $node->safe_psql('postgres', 'SHOW aggr.queue_maxsize') eq '20' }, 10);
like(publish($node, $eleven, 5), qr/"accepted": 11/, 'bound: after SIGHUP raised it, the same publish is queued');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET aggr.queue_maxsize; SELECT pg_reload_conf()});
$total{received} += 11;
$total{unique}   += 11;

# 7. a rolled-back publish queues nothing; a rolled-back savepoint only its part
$node->safe_psql('postgres', q{
    BEGIN;
    SELECT aggr_publish('{"topic": "rb", "event_id": "gone", "timestamp": 0, "source": "s"}');
    ROLLBACK;
    BEGIN;
    SELECT aggr_publish('{"topic": "rb", "event_id": "kept", "timestamp": 0, "source": "s"}');
    SAVEPOINT sp;
    SELECT aggr_publish('{"topic": "rb", "event_id": "undone", "timestamp": 0, "source": "s"}');
    ROLLBACK TO SAVEPOINT sp;
    COMMIT;
});
$total{received} += 1;
$total{unique}   += 1;

# 8. poison elements from other producers go to aggr.rejected; a plain event
#    as Filebeat or Vector push it is ingested
redis_cmd($redis, 'RPUSH', 'aggregator:events',
    'not json', '{"topic": 1}', '[1, 2]', "\xff\xfe", '{"a":' x 3000,
    '{"topic": "plain", "event_id": "fb-1", "timestamp": "2025-10-24T00:00:00Z", "source": "filebeat", "host": "x"}');
$total{received} += 1;
$total{unique}   += 1;
# envelopes from another producer are only elements: one event each, which
# is invalid, so each is dead-lettered whole, whatever count it claims (an
# old-format envelope, a forged id, a copy of a registered one)
my $ev = sub { qq({"topic": "env", "event_id": "$_[0]", "timestamp": 0, "source": "s"}) };
redis_cmd($redis, 'RPUSH', 'aggregator:events',
    '{"aggr_events":3,"events":[' . join(',', $ev->('x1'), $ev->('x2'), $ev->('x3')) . ']}',
    '{"aggr_envelope":"0123456789abcdef0123456789abcdef","events":[' . join(',', $ev->('x4'), $ev->('x5')) . ']}',
    '{"aggr_events":99999999,"events":[]}');
# an envelope as aggr's push registers it (id in the registry, its extra
# events counted), one of whose events became invalid: that event is
# dead-lettered alone, as its own JSON, the others stored
# (in one script, as aggr's push does it: a take between the steps would
# find the queue empty and drop the registry)
my $id = 'feedfacefeedfacefeedfacefeedface';
redis_cmd($redis, 'EVAL',
    q{redis.call('HSET', KEYS[2], ARGV[1], 3) redis.call('INCRBY', KEYS[3], 2) return redis.call('RPUSH', KEYS[1], ARGV[2])},
    3, 'aggregator:events', 'aggregator:events:envelope-ids', 'aggregator:events:extra-events',
    $id, qq({"aggr_envelope":"$id","events":[) . join(',', $ev->('e1'), '{"topic": "env"}', $ev->('e2')) . ']}');
$total{received} += 2;
$total{unique}   += 2;
# a published event whose text happens to start like an envelope is queued
# printed again (so as plain event JSON), not as the text it came in
like($node->safe_psql('postgres', q{SELECT aggr_publish_text('{"aggr_events":2,"events":[],"topic": "env", "event_id": "lookalike", "timestamp": 0, "source": "s"}')}),
    qr/"accepted": 1/, 'envelope: a look-alike event is accepted');
$total{received} += 1;
$total{unique}   += 1;
ok(wait_drained($node, $redis), 'poison: queue drained');
wait_for(sub { stats($node)->{received} >= $total{received} && stats($node)->{rejected} >= 9 }, 30);
$s = check_invariants($node, 'rollback and poison', %total);
is($node->safe_psql('postgres', q{SELECT string_agg(event_id, ',' ORDER BY event_id) FROM aggr.events WHERE topic = 'rb'}),
    'kept', 'rollback: only the committed publish reached the table');
is($s->{rejected}, 9, 'poison: five elements, three foreign envelopes and one event of an envelope dead-lettered');
is($node->safe_psql('postgres', q{SELECT count(*) FROM aggr.rejected WHERE reason <> ''}), 9, 'poison: each with a reason');
is($node->safe_psql('postgres', q{SELECT string_agg(event_id, ',' ORDER BY event_id) FROM aggr.events WHERE topic = 'env'}),
    'e1,e2,lookalike', 'envelope: its good events are stored, and the look-alike event too');
like($node->safe_psql('postgres', q{SELECT reason || ' ' || convert_from(raw, 'UTF8') FROM aggr.rejected WHERE reason LIKE 'envelope event%'}),
    qr/^envelope event 1: event_id is required \{"topic": "env"\}$/, 'envelope: the bad event is dead-lettered alone, as its own JSON');
is($node->safe_psql('postgres', q[SELECT count(*) FROM aggr.rejected WHERE convert_from(raw, 'UTF8') LIKE '{"aggr_e%' AND reason LIKE 'topic is required%']),
    3, 'envelope: a foreign envelope is one invalid event, dead-lettered whole');
is(redis_cmd($redis, 'EXISTS', 'aggregator:events:envelope-ids', 'aggregator:events:extra-events'), 0,
    'envelope: the registry and the extra count are back to nothing once the queue is empty');
like($node->safe_psql('postgres', q{SELECT reason FROM aggr.rejected WHERE raw = '\xfffe'::bytea}),
    qr/not valid/, 'poison: invalid UTF-8 kept byte for byte with its reason');
is($node->safe_psql('postgres', q{SELECT source FROM aggr.events WHERE event_id = 'fb-1'}), 'filebeat',
    'a plain event from another producer is ingested');

# 9. a processing list left by a slot beyond the pool is adopted by consumer 1
#    (this one with its token where aggr 0.2 kept it)
redis_cmd($redis, 'RPUSH', 'aggregator:events:processing:7',
    '{"topic": "orphan", "event_id": "o1", "timestamp": 0, "source": "s"}');
redis_cmd($redis, 'SET', 'aggregator:events:token:7', 'orphan-token');
# and one without a token (an older aggr's wait moved elements in untokened)
redis_cmd($redis, 'RPUSH', 'aggregator:events:processing:8',
    '{"topic": "orphan", "event_id": "o2", "timestamp": 0, "source": "s"}');
kill('TERM', consumer_pids($node));    # consumer 1 adopts at start
$total{received} += 2;
$total{unique}   += 2;
ok(wait_drained($node, $redis), 'orphan: processing list adopted and drained');
wait_for(sub { stats($node)->{received} >= $total{received} }, 30);
check_invariants($node, 'orphan', %total);

# 10. a token whose processing list is gone (deleted by hand) is dropped, so
#     it cannot make the next element look like a committed batch
my $committed = $node->safe_psql('postgres', 'SELECT last_token FROM aggr.consumers WHERE consumer = 1');
redis_cmd($redis, 'HSET', 'aggregator:events:batch:1', 'token', $committed);
ok(wait_for(sub { redis_cmd($redis, 'EXISTS', 'aggregator:events:batch:1') == 0 }, 30),
    'stale token: a token without its processing list is dropped');
like(publish($node, '{"topic": "stale", "event_id": "s1", "timestamp": 0, "source": "s"}'),
    qr/"accepted": 1/, 'stale token: the next event is queued');
$total{received} += 1;
$total{unique}   += 1;
ok(wait_drained($node, $redis), 'stale token: queue drained');
wait_for(sub { stats($node)->{received} >= $total{received} }, 30);
check_invariants($node, 'stale token', %total);

# 11. a publish in a database the consumers do not serve is refused (they
#     would store it in aggr.database): nothing queued, the database named
$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', 'CREATE EXTENSION aggr');
my $depth = redis_cmd($redis, 'LLEN', 'aggregator:events');
($ret, $out, $err) = $node->psql('app', q{\set VERBOSITY verbose
SELECT aggr_publish('{"topic": "elsewhere", "event_id": "w1", "timestamp": 0, "source": "s"}')});
like($err, qr/55000: broker mode queues events for the consumers of database "postgres" \(aggr.database\), not this database "app"/,
    'other database: the publish is refused, naming both databases');
is(redis_cmd($redis, 'LLEN', 'aggregator:events'), $depth, 'other database: nothing was queued');
like(publish($node, '{"topic": "here", "event_id": "h1", "timestamp": 0, "source": "s"}'),
    qr/"accepted": 1/, 'other database: in aggr.database a publish is queued as before');
$total{received} += 1;
$total{unique}   += 1;
ok(wait_drained($node, $redis), 'other database: queue drained');
wait_for(sub { stats($node)->{received} >= $total{received} }, 30);
check_invariants($node, 'other database', %total);

# health: broker and both consumers up
wait_for(sub { consumer_pids($node) == 2 }, 30);
like($node->safe_psql('postgres', 'SELECT aggr_health()'), qr/"status": "ok"/, 'health ok with broker and consumers up');

$node->stop;
stop_redis($redis);
done_testing();
