# Retention end to end, with the expiry worker of a preloaded aggr:
# - a stream of 1,000,000 events kept 1 s and remembered 2 s more: with
#   autovacuum the table and its indexes level off instead of growing with
#   the stream; counters exact;
# - within aggr.dedup_window an expired event re-sent is a duplicate, and
#   its tombstone is not replaced; after it, the event is stored as new;
# - an -m immediate crash while the worker works through a backlog: after
#   recovery rows, indexes (amcheck) and counters agree, and expiry finishes;
# - broker mode: consumers ingest while expiry runs; nothing is lost.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use lib 't';
use AggrTest qw(new_node start_redis stop_redis demo_events event_batches check_invariants
  wait_for stats publish wait_drained consumer_pids);

my $node = new_node('retention',
    'aggr.retention'    => '1s',
    'aggr.dedup_window' => '2s',
    # a server's memory, not the harness's 1MB, and statements unlogged:
    # the stream's would fill the log
    'shared_buffers' => '128MB',
    'log_statement'  => 'none',
    # autovacuum as README recommends with a short retention
    'autovacuum_naptime'              => '1s',
    'autovacuum_vacuum_cost_delay'    => '0',
    'autovacuum_vacuum_scale_factor'  => '0',
    'autovacuum_vacuum_threshold'     => '50000');
$node->safe_psql('postgres', 'CREATE EXTENSION amcheck');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# Sets retention and dedup window and waits until the worker has them.
sub settings
{
    my ($retention, $window) = @_;
    sql("ALTER SYSTEM SET aggr.retention = '$retention'");
    sql("ALTER SYSTEM SET aggr.dedup_window = '$window'");
    sql('SELECT pg_reload_conf()');
    # the worker applies a reload before its next batch, within a second
    usleep(1_500_000);
}

# A statement that ingests events $from .. $to of topic $topic (10 a batch
# share a topic suffix), each with a 200-byte payload.
sub ingest_sql
{
    my ($topic, $from, $to) = @_;
    return "SELECT aggr_ingest(jsonb_agg(jsonb_build_object('topic', '$topic' || (i % 10), "
      . "'event_id', 'e' || i, 'timestamp', 0, 'source', 's', "
      . "'payload', jsonb_build_object('blob', repeat('x', 200))))) IS NOT NULL "
      . "FROM generate_series($from, $to) i;\n";
}

sub relation_bytes { return sql(q{SELECT pg_total_relation_size('aggr.events')}); }

# ---- a continuous stream: the table levels off ----

my $dir = PostgreSQL::Test::Utils::tempdir();
open(my $fh, '>', "$dir/stream.sql") or die;
print $fh ingest_sql('s', $_ * 5000 + 1, ($_ + 1) * 5000) for 0 .. 199;
close $fh;
my ($out, $err) = ('', '');
my $t0     = time();
my $stream = IPC::Run::start(
    [ 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', "$dir/stream.sql" ],
    '>', \$out, '2>', \$err);
my @samples;    # [events ingested so far, bytes of table and indexes]
while ($stream->pumpable)
{
    usleep(1_000_000);
    push @samples, [ sql(q{SELECT last_value FROM aggr.events_seq_seq}), relation_bytes() ];
    $stream->pump_nb;
}
ok($stream->finish, 'the stream of 1,000,000 events ingested without an error') or diag($err);
my $seconds = time() - $t0;
# wait until every event is expired and forgotten, then vacuum once more
ok(wait_for(sub { sql('SELECT count(*) FROM aggr.events') == 0 }, 60), 'every event expired and forgotten');
sql('VACUUM aggr.events');
my $end_bytes = relation_bytes();

# Levelling off: over the stream's second half the size grows by less than a
# quarter of what those events take without retention (measured on the
# first sample, before anything expired).
my $half = int(@samples / 2);
cmp_ok(scalar(@samples), '>=', 6, 'the stream ran long enough to sample its size');
my $bytes_per_event = $samples[0][1] / $samples[0][0];
my ($second_max) = sort { $b <=> $a } map { $_->[1] } @samples[ $half .. $#samples ];
my $growth  = $second_max - $samples[ $half - 1 ][1];
my $without = $bytes_per_event * (1000000 - $samples[ $half - 1 ][0]);
diag(sprintf('1,000,000 events in %.1f s; bytes of table and indexes (events: bytes): %s; at the end, after a vacuum %d',
        $seconds, join(', ', map { "$_->[0]: $_->[1]" } @samples), $end_bytes));
cmp_ok($growth, '<', $without / 4,
    sprintf('size levels off: the second half adds %.0f MB, under a quarter of the %.0f MB it would without retention',
        $growth / 1e6, $without / 1e6));
cmp_ok($end_bytes, '<=', $second_max, 'and does not grow once the stream has stopped');
check_invariants($node, 'stream', received => 1000000, unique => 1000000, duplicates => 0, expired => 1000000);
is(sql('SELECT expired_upto = forgotten_upto FROM aggr.expiry'), 't', 'everything expired was forgotten');

# ---- the dedup window ----

settings('1s', '1h');
sql(ingest_sql('d', 1, 1000));
ok(wait_for(sub { stats($node)->{expired} == 1001000 }, 30), 'dedup: 1,000 events expired');
my $r = sql(ingest_sql('d', 1, 1000) =~ s/ IS NOT NULL//r);
like($r, qr/"duplicates": 1000/, 'dedup: re-sent within the window, every one is a duplicate');
is(sql(q{SELECT count(*) FROM aggr.events WHERE topic LIKE 'd%' AND expired_at IS NOT NULL AND payload = '{}'}),
    1000, 'dedup: the tombstones stay as they were');
is(sql(q{SELECT count(*) FROM aggr_events() WHERE topic LIKE 'd%'}), 0, 'dedup: readers see none of them');
check_invariants($node, 'within the window', received => 1002000, unique => 1001000, expired => 1001000);

settings('1h', '1s');
ok(wait_for(sub { sql(q{SELECT count(*) FROM aggr.events WHERE topic LIKE 'd%'}) == 0 }, 30),
    'dedup: the window passed, the keys are forgotten');
$r = sql(ingest_sql('d', 1, 1000) =~ s/ IS NOT NULL//r);
like($r, qr/"unique": 1000/, 'dedup: re-sent after the window, stored as new');
check_invariants($node, 'after the window', received => 1003000, unique => 1002000, expired => 1001000);

# ---- a crash while the worker works through a backlog ----

settings('0', '-1');
sql(ingest_sql('c', $_ * 5000 + 1, ($_ + 1) * 5000)) for 0 .. 59;
my $before = stats($node)->{expired};
settings('1s', '-1');
ok(wait_for(sub { stats($node)->{expired} > $before + 10000 }, 30), 'crash: the worker is expiring the backlog')
  or diag(sql(q{SELECT row_to_json(a) FROM pg_stat_activity a WHERE backend_type = 'aggr expiry'}) . ' '
    . sql(q{SELECT row_to_json(x) FROM aggr.expiry x}) . ' ' . sql(q{SELECT row_to_json(w) FROM aggr_events_watermark() w}));
$node->stop('immediate');
$node->start;
my $at_crash = stats($node)->{expired};
check_invariants($node, 'crash: after recovery', received => 1303000, unique => 1302000);
is(sql(q{SELECT count(*) FROM aggr.events WHERE expired_at IS NOT NULL AND payload <> '{}'}), 0,
    'crash: every tombstone is emptied');
for my $index (qw(events_pkey events_seq_idx events_topic_seq_idx events_expired_seq_idx))
{
    my ($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT bt_index_check('aggr.$index', true)");
    ok($ret == 0 && $stderr eq '', "crash: amcheck finds $index sound") or diag($stderr);
}
ok(wait_for(sub { stats($node)->{expired} == 1302000 }, 60), 'crash: expiry finishes after recovery')
  or diag("expired at recovery $at_crash, now " . stats($node)->{expired});
check_invariants($node, 'crash: done', received => 1303000, unique => 1302000, expired => 1302000);

# ---- broker mode: consumers ingest while expiry runs ----

$node->stop;
my $redis = start_redis();
$node->append_conf('postgresql.conf',
    "aggr.broker_url = '$redis->{url}'\naggr.worker_count = 2\naggr.poll_interval = '200ms'\n");
$node->start;
wait_for(sub { consumer_pids($node) == 2 }, 30) or die 'consumers did not start';
publish($node, $_) for event_batches(500, demo_events(20000, 0.35, 'broker-'));
ok(wait_drained($node, $redis), 'broker: the queue drained');
ok(wait_for(sub { stats($node)->{expired} == 1315000 }, 60), 'broker: every event consumed expired');
check_invariants($node, 'broker', received => 1323000, unique => 1315000, expired => 1315000);
stop_redis($redis);

done_testing();
