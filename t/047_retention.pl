# Retention end to end, with the expiry worker of a preloaded aggr:
# - a stream of 1,000,000 events kept 1 s and remembered 2 s more: with
#   autovacuum the table and its indexes level off instead of growing with
#   the stream; counters exact;
# - within aggr.dedup_window an expired event re-sent is a duplicate, and
#   its tombstone is not replaced; once forgotten, it is stored as new; with
#   a window of 0 expiry deletes at once and leaves no tombstone;
# - an -m immediate crash while the worker works through a backlog, with
#   aggr_expire() taking turns beside it: after recovery rows, indexes
#   (amcheck) and counters agree, and expiry finishes;
# - broker mode: consumers ingest while expiry runs; nothing is lost.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use lib 't';
use AggrTest qw(new_node start_redis stop_redis demo_events event_batches check_invariants spawn
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
# a steady stream, not a burst at the machine's ceiling: on 2 cores shared
# with the ingesting backend and autovacuum, a flat-out stream left expiry
# behind in some runs (then the table grows with the stream)
print $fh ingest_sql('s', $_ * 5000 + 1, ($_ + 1) * 5000), "SELECT pg_sleep(0.05);\n" for 0 .. 199;
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

# Levelling off: the table and its indexes never take near what the
# stream's events take without retention (bytes per event measured on the
# first sample, before anything expired), and over the stream's second half
# they grow by less than a third of what its events would add without it
# (a pause of autovacuum or expiry shows as a step, not as a slope).
cmp_ok(scalar(@samples), '>=', 8, 'the stream ran long enough to sample its size');
my $bytes_per_event = $samples[0][1] / $samples[0][0];
my ($max)           = sort { $b <=> $a } map { $_->[1] } @samples;
my ($at_half)       = grep { $_->[0] >= 500000 } @samples;
my $without         = $bytes_per_event * 1000000;
diag(sprintf('1,000,000 events in %.1f s; bytes of table and indexes (events: bytes): %s; at the end, after a vacuum %d',
        $seconds, join(', ', map { "$_->[0]: $_->[1]" } @samples), $end_bytes));
cmp_ok($max, '<', 0.85 * $without,
    sprintf('size bounded: at most %.0f MB, where the events take %.0f MB without retention', $max / 1e6, $without / 1e6));
cmp_ok($max - $at_half->[1], '<', $without / 2 / 3,
    sprintf('size levels off: the second half of the stream adds %.0f MB to %.0f MB (%.0f MB without retention)',
        ($max - $at_half->[1]) / 1e6, $at_half->[1] / 1e6, $without / 2 / 1e6));
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

# aggr.dedup_window = 0: what is left of the tombstones is forgotten, and
# expiry deletes new events at once, leaving none
settings('1s', '0');
ok(wait_for(sub { sql(q{SELECT count(*) FROM aggr.events WHERE topic LIKE 'd%'}) == 0 }, 30),
    'window 0: the tombstones left are forgotten');
sql(ingest_sql('z', 1, 1000));
ok(wait_for(sub { stats($node)->{expired} == 1002000 }, 30), 'window 0: new events expired');
is(sql(q{SELECT count(*) FROM aggr.events WHERE topic LIKE 'z%'}), 0, 'window 0: deleted, no tombstone left');
is(sql('SELECT expired_upto = forgotten_upto FROM aggr.expiry'), 't', 'window 0: nothing left to forget');
$r = sql(ingest_sql('d', 1, 1000) =~ s/ IS NOT NULL//r);
like($r, qr/"unique": 1000/, 'dedup: re-sent after its key was forgotten, stored as new');
ok(wait_for(sub { stats($node)->{expired} == 1003000 }, 30), 'window 0: and expired again');
check_invariants($node, 'after the window', received => 1004000, unique => 1003000, expired => 1003000);

# ---- a crash while the worker works through a backlog, aggr_expire() beside it ----

settings('0', '-1');
sql(ingest_sql('c', $_ * 5000 + 1, ($_ + 1) * 5000)) for 0 .. 59;
my $before = stats($node)->{expired};
settings('1s', '-1');
ok(wait_for(sub { stats($node)->{expired} > $before + 10000 }, 30), 'crash: the worker is expiring the backlog')
  or diag(sql(q{SELECT row_to_json(a) FROM pg_stat_activity a WHERE backend_type = 'aggr expiry'}) . ' '
    . sql(q{SELECT row_to_json(x) FROM aggr.expiry x}) . ' ' . sql(q{SELECT row_to_json(w) FROM aggr_events_watermark() w}));
# expiries by hand take turns with the worker
my $by_hand = 0;
$by_hand += sql(q{SELECT aggr_expire('0 s', 20000)}) for 1 .. 3;
cmp_ok($by_hand, '>', 0, "crash: aggr_expire() expired $by_hand beside the worker");
$node->stop('immediate');
$node->start;
my $at_crash = stats($node)->{expired};
cmp_ok($at_crash, '<', 1303000, "crash: it came in the middle of the backlog ($at_crash of 1,303,000 expired)");
check_invariants($node, 'crash: after recovery', received => 1304000, unique => 1303000);
for my $index (qw(events_pkey events_seq_idx events_topic_seq_idx))
{
    my ($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT bt_index_check('aggr.$index', true)");
    ok($ret == 0 && $stderr eq '', "crash: amcheck finds $index sound") or diag($stderr);
}
ok(wait_for(sub { stats($node)->{expired} == 1303000 }, 60), 'crash: expiry finishes after recovery')
  or diag("expired at recovery $at_crash, now " . stats($node)->{expired});
check_invariants($node, 'crash: done', received => 1304000, unique => 1303000, expired => 1303000);

# ---- broker mode: consumers ingest while expiry runs ----

$node->stop;
my $redis = start_redis();
$node->append_conf('postgresql.conf',
    "aggr.broker_url = '$redis->{url}'\naggr.worker_count = 2\naggr.poll_interval = '200ms'\n");
$node->start;
wait_for(sub { consumer_pids($node) == 2 }, 30) or die 'consumers did not start';
publish($node, $_) for event_batches(500, demo_events(20000, 0.35, 'broker-'));
ok(wait_drained($node, $redis), 'broker: the queue drained');
ok(wait_for(sub { stats($node)->{expired} == 1316000 }, 60), 'broker: every event consumed expired');
check_invariants($node, 'broker', received => 1324000, unique => 1316000, expired => 1316000);

# ---- tombstones under marks of 0 (a restore does not dump aggr.expiry) ----

# Makes 300 tombstones of topic $topic, then puts the marks back at 0 with
# expiry stopped, as a pg_dump and restore leaves them.
sub restored_tombstones
{
    my ($topic) = @_;
    settings('0', '-1');
    my $expired = stats($node)->{expired};
    sql(ingest_sql($topic, 1, 300));
    settings('1s', '-1');
    ok(wait_for(sub { stats($node)->{expired} == $expired + 300 }, 30), "restore $topic: 300 tombstones");
    settings('0', '-1');
    sql('UPDATE aggr.expiry SET expired_upto = 0, forgotten_upto = 0');
    return $expired + 300;
}

# window 0 deletes the tombstones it meets, rather than passing them
my $expired = restored_tombstones('ra');
settings('1s', '0');
ok(wait_for(sub { sql(q{SELECT count(*) FROM aggr.events WHERE topic LIKE 'ra%'}) == 0 }, 30),
    'restore, window 0: the tombstones are deleted, not passed');
is(stats($node)->{expired}, $expired, 'restore, window 0: and not counted as expired again');
is(sql('SELECT expired_upto = forgotten_upto FROM aggr.expiry'), 't', 'restore, window 0: nothing left to forget');

# retention off, a window set: the tombstones are still forgotten after it
$expired = restored_tombstones('rb');
settings('0', '1s');
ok(wait_for(sub { sql(q{SELECT count(*) FROM aggr.events WHERE topic LIKE 'rb%'}) == 0 }, 30),
    'restore, retention off: the tombstones are forgotten after the window');
is(stats($node)->{expired}, $expired, 'restore, retention off: the count stays');
check_invariants($node, 'restored tombstones', received => 1324600, unique => 1316600, expired => 1316600);

# ---- an old event locked by someone's open transaction ----

# (expiry stopped until the holder has its lock, so the rows are still live)
my $log_offset = -s $node->logfile;
sql(ingest_sql('lk', 1, 10));
my $holder = spawn($node->basedir . '/holder.log', 'psql', '-X', '-q', '-d', $node->connstr('postgres'),
    '-c', "BEGIN; SELECT seq FROM aggr.events WHERE topic LIKE 'lk%' FOR SHARE; SELECT pg_sleep(90); COMMIT;");
wait_for(sub { sql(q{SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'}) == 1 }, 30);
settings('1s', '-1');
ok(wait_for(sub { slurp_file($node->logfile, $log_offset) =~ /waiting for a lock that another transaction holds, 5 batches in a row/ }, 60),
    'locked: expiry says it waits for a lock someone holds');
is(stats($node)->{expired}, 1316600, 'locked: and expires nothing meanwhile');
sql(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(90)%' AND pid <> pg_backend_pid()});
waitpid($holder, 0);
ok(wait_for(sub { stats($node)->{expired} == 1316610 }, 30), 'locked: once it is released, expiry goes on');
stop_redis($redis);

done_testing();
