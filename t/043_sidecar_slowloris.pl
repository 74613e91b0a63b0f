# 043_sidecar_slowloris.pl: slowloris against the real aggr-sidecar.  Some
# 300 connections from 127.0.0.1 trickle request lines, headers, bodies and
# chunks a byte at a time and stay open for about five seconds; a quarter of
# them finish a valid event and must get 200.  Meanwhile /healthz must answer
# 200 within one second every time it is asked, and a normal POST /publish
# must succeed.  Bounded in connections and time: the test stops by itself.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use List::Util qw(max min);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use SidecarTest qw(new_node start_sidecar stop_sidecar http converse trickle
  rss_kb wait_healthz check_invariants);
use Test::More;
use Time::HiRes qw(time);

my $J     = JSON::PP->new->canonical;
my $WANT  = 300;    # slow connections
my $GAP   = 0.4;    # seconds between two bytes of one slow client
my $STEPS = 12;     # bytes each trickles: about 5 s held open

# soft limit on open files of a process
sub fd_limit
{
    my ($pid) = @_;
    open(my $fh, '<', "/proc/$pid/limits") or return 1024;
    while (my $line = <$fh>)
    {
        return $1 eq 'unlimited' ? 1 << 20 : $1 if $line =~ /^Max open files\s+(\S+)/;
    }
    return 1024;
}

sub open_sockets
{
    my ($pid) = @_;
    return scalar grep { (readlink($_) // '') =~ /^socket:/ } glob("/proc/$pid/fd/*");
}

my $node = new_node('slowloris');
my $sc = start_sidecar($node,
    args => [ '--threads=2', '--timeout=10', '--max-conns=512',
        '--max-conns-per-ip=400' ]);
my $port = $sc->{port};
is(wait_healthz($port, 200, 30)->{status}, 200, 'sidecar up');

# as many as both ends can hold, with room to spare
my $n = min($WANT, map { fd_limit($_) - 64 } $$, $sc->{pid});
cmp_ok($n, '>=', 200, "$n slow connections fit in the open-file limits");
my $base_sockets = open_sockets($sc->{pid});

my $ids = 0;
sub ev
{
    return $J->encode({ topic => 'slow', event_id => 's-' . ++$ids,
        timestamp => '2025-10-24T00:00:00Z', source => 'tap', @_ });
}

sub head { return "$_[0] HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" }

# a start sent at once, then one byte every $GAP seconds, never finished
sub never_done
{
    my ($start, $byte) = @_;
    return [ [ 0, $start ], map { [ $GAP, $byte ] } 1 .. $STEPS ];
}

my @kinds = (
    [ 'request line', sub { never_done('GET /stat', 's') } ],
    [ 'headers', sub { never_done(head('GET /stats') . 'X-Slow: ', 'x') } ],
    [ 'body', sub { never_done(head('POST /publish') . "Content-Length: 1000\r\n\r\n[", ' ') } ],
    [ 'chunks', sub {
            never_done(head('POST /publish') . "Transfer-Encoding: chunked\r\n\r\n",
                "1\r\n \r\n")
    } ],
    [ 'valid event', sub {
            my $e = ev();
            trickle(head('POST /publish') . 'Content-Length: ' . length($e) . "\r\n\r\n$e",
                $STEPS, $GAP);
    } ]);
my @convs = map { { kind => $kinds[ $_ % @kinds ][0], port => $port,
        send => $kinds[ $_ % @kinds ][1]->() } } 0 .. $n - 1;
my $finishing = grep { $_->{kind} eq 'valid event' } @convs;

# while they trickle: /healthz, timed, and now and then a normal publish
my (@latency, @healthz_bad, @publish, $most_sockets);
my $tick = sub {
    my $t0 = time();
    my $r = http($port, 'GET', '/healthz', timeout => 5);
    push @latency, time() - $t0;
    push @healthz_bad, "$r->{status} $r->{body}" unless $r->{status} == 200;
    if (@latency % 8 == 4)
    {
        $t0 = time();
        my $p = http($port, 'POST', '/publish', body => ev(source => 'normal'), timeout => 5);
        push @publish, [ $p->{status}, time() - $t0 ];
    }
    my $s = open_sockets($sc->{pid});
    $most_sockets = $s if !$most_sockets || $s > $most_sockets;
};

my $t0 = time();
my @answers = converse(\@convs, timeout => 1, tick => $tick, tick_every => 0.2);
my $took = time() - $t0;
note sprintf('%d slow connections for %.1f s; /healthz asked %d times: median %.1f ms, '
      . 'max %.1f ms; publishes %s; sidecar sockets at most %d (%d before); RSS %d kB',
    $n, $took, scalar @latency, 1000 * (sort { $a <=> $b } @latency)[ $#latency / 2 ],
    1000 * max(@latency), join(' ', map { sprintf('%d in %.0f ms', $_->[0], 1000 * $_->[1]) }
          @publish), $most_sockets, $base_sockets, rss_kb($sc->{pid}));

cmp_ok($took, '<', 15, 'the run stops by itself');
cmp_ok($most_sockets - $base_sockets, '>=', $n, "the sidecar held all $n connections at once");
cmp_ok(scalar @latency, '>=', 15, '/healthz asked throughout');
is_deeply(\@healthz_bad, [], '/healthz answered 200 every time');
cmp_ok(max(@latency), '<', 1, '/healthz answered within one second every time');
ok(@publish && !grep({ $_->[0] != 200 } @publish), 'normal publishes succeeded: 200');

my %held;
for my $k (0 .. $#convs)
{
    my ($c, $r) = ($convs[$k], $answers[$k]);
    if ($c->{kind} eq 'valid event')
    {
        $held{'valid event answered 200'}++ if $r->{status} == 200;
    }
    elsif (!$r->{status} && !$r->{closed} && ($r->{error} // '') eq 'client gave up waiting')
    {
        $held{"$c->{kind} held open"}++;
    }
}
for my $kind (map { $_->[0] } @kinds)
{
    my $want = grep { $_->{kind} eq $kind } @convs;
    my $label = $kind eq 'valid event' ? 'valid event answered 200' : "$kind held open";
    is($held{$label} // 0, $want, "slow $kind: all $want " . ($kind eq 'valid event'
            ? 'answered 200 when done' : 'held open, unanswered, until the client left'));
}

# when they are gone: the connections are released, nothing else changed
ok( AggrTest::wait_for(sub { open_sockets($sc->{pid}) <= $base_sockets + 2 }, 10),
    'the sidecar released the connections');
is(http($port, 'GET', '/healthz')->{status}, 200, 'healthz 200 afterwards');
check_invariants($node, 'after slowloris',
    received => $finishing + @publish,
    unique   => $finishing + @publish);
is(stop_sidecar($sc), 0, 'SIGTERM: exit 0');

done_testing();
