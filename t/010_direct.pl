# Direct mode end to end: the demo's 20,000 events with 35 % duplicates sent by
# two concurrent clients in opposite orders (overlapping batches, the shape that
# deadlocks without key ordering), then a crash restart: counts stay exact and
# dedup survives.  Two writers of one topic do not wait on each other (each
# backend counts into a shard of its own).  pg_dump and a restore carry every
# event, counter and the seq sequence.
use strict;
use warnings;

use IPC::Run;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 't';
use AggrTest qw(new_node demo_events event_batches check_invariants);

my $node = new_node('direct', deadlock_timeout => '100ms');

my @batches = event_batches(500, demo_events(20000, 0.35));
my $dir = PostgreSQL::Test::Utils::tempdir();
my @files;
for my $client (0, 1)
{
    my @order = $client ? reverse(@batches) : @batches;
    my $file = "$dir/client$client.sql";
    open(my $fh, '>', $file) or die;
    print $fh "SELECT aggr_publish(\$aggr\$$_\$aggr\$) IS NOT NULL;\n" for @order;
    close $fh;
    push @files, $file;
}

my @runs;
for my $file (@files)
{
    my ($out, $err) = ('', '');
    my $h = IPC::Run::start(
        [ 'psql', '-X', '-q', '-At', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-f', $file ],
        '>', \$out, '2>', \$err);
    push @runs, [ $h, \$out, \$err ];
}
for my $r (@runs)
{
    ok($r->[0]->finish, 'client finished without an error');
    is(${ $r->[2] }, '', 'no error or deadlock surfaced to the client');
}

check_invariants($node, 'two clients', received => 40000, unique => 13000, duplicates => 27000);
is($node->safe_psql('postgres', q{SELECT count(DISTINCT topic) FROM aggr.events}), 10, 'ten topics');
is($node->safe_psql('postgres', q{SELECT sum((t ->> 'count')::int) FROM jsonb_array_elements(aggr_stats() -> 'topics') t}),
    13000, 'per-topic counts add up to the stored rows');

# a crash (immediate stop) loses nothing committed, and dedup survives it
$node->stop('immediate');
$node->start;
check_invariants($node, 'after crash restart', received => 40000, unique => 13000);
$node->safe_psql('postgres', "SELECT aggr_ingest(\$aggr\$$batches[0]\$aggr\$)");
check_invariants($node, 'resent after restart', received => 40500, unique => 13000, duplicates => 27500);

# two open transactions ingesting one topic: the second does not wait for the
# first (a shared counter row would block it until lock_timeout)
my $first = $node->background_psql('postgres');
$first->query_safe(q{BEGIN; SELECT aggr_ingest('{"topic": "shared", "event_id": "a", "timestamp": 0, "source": "s"}')});
is($node->safe_psql('postgres',
    q{SET lock_timeout = '3s';
      SELECT aggr_ingest('{"topic": "shared", "event_id": "b", "timestamp": 0, "source": "s"}') ->> 'unique'}),
    '1', 'a second writer of the same topic does not wait for the first');
$first->query_safe('COMMIT');
$first->quit;
is($node->safe_psql('postgres', q{SELECT count(DISTINCT shard) FROM aggr.counters WHERE topic = 'shared'}),
    2, 'the two backends counted into two shards');
check_invariants($node, 'one topic, two writers', received => 40502, unique => 13002);

# pg_dump and a restore into a new database keep the events, the counters and
# where seq goes on
my $dump = "$dir/aggr.dump";
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr('restored'), $dump ], 'pg_restore');
my $snapshot = q{SELECT count(*), sum(hashtext(topic || event_id || payload::text)), max(seq),
                        (SELECT aggr_stats() - 'uptime_seconds' - 'workers') FROM aggr.events};
is($node->safe_psql('restored', $snapshot), $node->safe_psql('postgres', $snapshot),
    'the restored database has the same events, seq values and stats');
$node->safe_psql('restored', q{SELECT aggr_ingest('{"topic": "after", "event_id": "1", "timestamp": 0, "source": "s"}')});
is($node->safe_psql('restored', q{SELECT count(*) FROM aggr.events WHERE seq > (SELECT max(seq) FROM aggr.events WHERE topic <> 'after')}),
    1, 'an event ingested after the restore gets a seq after all restored ones');
is($node->safe_psql('restored', "SELECT aggr_ingest(\$aggr\$$batches[0]\$aggr\$) ->> 'duplicates'"),
    500, 'a batch re-sent to the restored database is all duplicates');

done_testing();
