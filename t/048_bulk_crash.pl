# The bulk path (extension/bulk.h) under a crash, on a stock server (aggr
# not preloaded, as a user installs it): two writers ingest the same keys
# at the same time, batch by batch, so their batches meet each other's new
# keys (the conflict and retry of bulk.h); the server stops with -m
# immediate in the middle.  After recovery:
# - every batch a writer saw committed is there, each key once in the heap;
# - the indexes hold every row (amcheck, heapallindexed), the heap is sound
#   (verify_heapam), and the counters agree with the rows;
# - ingest goes on, and the batches sent again are all duplicates.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use lib 't';
use AggrTest qw(new_node check_invariants wait_for stats);

my $node = new_node('bulk',
    shared_preload_libraries => '',
    shared_buffers           => '128MB',
    log_statement            => 'none');
$node->safe_psql('postgres', 'CREATE EXTENSION amcheck');

sub sql { return $node->safe_psql('postgres', $_[0]); }

# batch $b: events e(300 b) .. e(300 b + 499) over 10 topics, so each batch
# shares 200 keys with the next; both writers send the same batches
my $batches = 3000;
sub batch_sql
{
    my ($b, $source) = @_;
    my $from = 300 * $b;
    return "SELECT 'acked', $b, aggr_ingest(jsonb_agg(jsonb_build_object("
      . "'topic', 't' || (i % 10), 'event_id', 'e' || i, 'timestamp', 0, "
      . "'source', '$source', 'payload', jsonb_build_object('n', i)))) IS NOT NULL "
      . "FROM generate_series($from, $from + 499) i;\n";
}

my $dir = PostgreSQL::Test::Utils::tempdir();
my (@writers, @out);
for my $w (0, 1)
{
    open(my $fh, '>', "$dir/writer$w.sql") or die;
    # the log says when a batch met the other writer's keys (bulk.h, step 4)
    print $fh "SET log_min_messages = debug1;\n";
    print $fh batch_sql($_, "w$w") for 0 .. $batches - 1;
    close $fh;
    $out[$w] = '';
    push @writers,
      IPC::Run::start(
        [ 'psql', '-X', '-q', '-At', '-d', $node->connstr('postgres'), '-f', "$dir/writer$w.sql" ],
        '>', \$out[$w], '2>', \my $err);
}

# the batches writer $w has seen committed
sub acked
{
    my ($w) = @_;
    return map { /^acked\|(\d+)\|t$/ ? $1 : () } split /\n/, $out[$w];
}
ok(wait_for(sub { $_->pump_nb for @writers; acked(0) >= 40 && acked(1) >= 40 }, 120),
    'both writers committed batches');
$node->stop('immediate');
$_->finish for @writers;
my @acked = (acked(0), acked(1));
cmp_ok(scalar(@acked), '<', 2 * $batches, 'the crash came in the middle of the ingest (' . scalar(@acked) . ' batches acked)');
$node->start;
my $retried = () = slurp_file($node->logfile) =~ /again, by the (bulk path|INSERT statement)/g;
diag("$retried batches met the other writer's new keys and were tried again");

my $missing = sql(
    "SELECT count(*) FROM (SELECT DISTINCT 300 * b + j AS i
        FROM unnest('{" . join(',', @acked) . "}'::int[]) b, generate_series(0, 499) j) k
     WHERE NOT EXISTS (SELECT FROM aggr.events e
                       WHERE e.topic = 't' || (k.i % 10) AND e.event_id = 'e' || k.i)");
is($missing, 0, 'every event of a batch acknowledged before the crash is stored');
is(sql(q{SET enable_indexscan = off; SET enable_indexonlyscan = off; SET enable_bitmapscan = off;
         SELECT count(*) - count(DISTINCT (topic, event_id)) FROM aggr.events}),
    0, 'each key once in the heap');
for my $index (qw(events_pkey events_seq_idx events_topic_seq_idx))
{
    my ($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT bt_index_check('aggr.$index', true)");
    ok($ret == 0 && $stderr eq '', "amcheck finds $index sound, with every row") or diag($stderr);
}
is(sql(q{SELECT count(*) FROM verify_heapam('aggr.events')}), 0, 'verify_heapam finds aggr.events sound');
# each acknowledged batch counted once, and at most the one batch in flight
# per writer besides (committed, its answer lost in the crash)
my $s = check_invariants($node, 'after recovery');
cmp_ok($s->{received}, '>=', 500 * @acked, 'received counts every acknowledged batch');
cmp_ok($s->{received}, '<=', 500 * (@acked + 2), 'and no batch twice');
cmp_ok($s->{bulk_fallback_events}, '<', $s->{received} / 2,
    "most batches took the bulk path ($s->{bulk_fallback_events} of $s->{received} events did not)");

# ingest goes on; what was acknowledged, sent again, is all duplicates
my $before = sql('SELECT count(*) FROM aggr.events');
my $again  = join('', map { batch_sql($_, 'again') } @acked[ 0 .. 9 ]);
$node->safe_psql('postgres', $again);
is(sql('SELECT count(*) FROM aggr.events'), $before, 'acknowledged batches sent again are duplicates');
my $after = check_invariants($node, 'after sending them again');
is_deeply([ $after->{received} - $s->{received}, $after->{duplicate_dropped} - $s->{duplicate_dropped} ],
    [ 5000, 5000 ], 'counted as 5,000 received, 5,000 duplicates');
sql(batch_sql($batches + 10, 'after'));    # past every key sent so far
is(sql("SELECT count(*) FROM aggr.events WHERE source = 'after'"), 500, 'new events after recovery are stored');
check_invariants($node, 'after more ingest');

done_testing();
