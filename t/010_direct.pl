# Direct mode end to end: the demo's 20,000 events with 35 % duplicates sent by
# two concurrent clients in opposite orders (overlapping batches, the shape that
# deadlocks without key ordering), then a crash restart: counts stay exact and
# dedup survives.
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

done_testing();
