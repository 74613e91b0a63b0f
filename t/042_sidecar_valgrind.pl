# 042_sidecar_valgrind.pl: aggr-sidecar under valgrind memcheck
# (--error-exitcode=1 --leak-check=full) for a subset of 040 and 041: every
# route, the error paths, chunked and oversized bodies, a PostgreSQL restart,
# then SIGTERM.  Any memory error or leak makes the exit status non-zero.
# First the sidecar's C unit tests (sidecar/test_sidecar), also under valgrind.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use SidecarTest qw(new_node start_sidecar stop_sidecar http raw json
  wait_healthz);
use Test::More;

my $J = JSON::PP->new->canonical;

# the unit tests, built beside the binary by `make -C sidecar`
my $bin = $ENV{AGGR_SIDECAR} || "$FindBin::RealBin/../sidecar/aggr-sidecar";
my ($unit) = grep { -x $_ } ($bin =~ s{[^/]*$}{test_sidecar}r,
    "$FindBin::RealBin/../sidecar/test_sidecar");
ok($unit, 'sidecar/test_sidecar is built');
my $out = `valgrind --quiet --error-exitcode=1 --leak-check=full $unit 2>&1`;
is($? >> 8, 0, 'unit tests pass under valgrind') or diag $out;
like($out, qr/^\d+ passed, 0 failed$/m, 'unit tests report no failure');

sub event
{
    return $J->encode(
        {
            topic     => 'vg',
            event_id  => 'v-1',
            timestamp => '2025-10-24T00:00:00Z',
            source    => 'tap',
            @_
        });
}

my $node = new_node('valgrind');
my $sc = start_sidecar($node,
    valgrind => 1,
    args     => [ '--threads=2', '--max-body=65536', '--token=tok' ]);
my $port = $sc->{port};
my %auth = (headers => { Authorization => 'Bearer tok' });

is(wait_healthz($port, 200, 60)->{status}, 200, 'healthz under valgrind');

my @cases = (
    [ 'publish one', 200, 'POST', '/publish', body => event(), %auth ],
    [ 'publish dup batch', 200, 'POST', '/publish',
        body => '[' . event() . ',' . event(event_id => 'v-2') . ']', %auth ],
    [ 'no token', 401, 'POST', '/publish', body => event() ],
    [ 'empty array', 400, 'POST', '/publish', body => '[]', %auth ],
    [ 'not json', 400, 'POST', '/publish', body => 'not-json', %auth ],
    [ 'schema', 422, 'POST', '/publish', body => event(event_id => 5), %auth ],
    [ 'nul', 400, 'POST', '/publish', body => event() . "\0", %auth ],
    [ 'bad utf8', 400, 'POST', '/publish', body => event(source => "\xFF"), %auth ],
    [ 'deep', 400, 'POST', '/publish', body => ('[' x 30000) . (']' x 30000), %auth ],
    [ 'too large', 413, 'POST', '/publish', body => 'x' x 70000, %auth ],
    [ 'events', 200, 'GET', '/events?limit=1' ],
    [ 'events topic', 200, 'GET', '/events?topic=vg&after=0' ],
    [ 'events bad limit', 400, 'GET', '/events?limit=x' ],
    [ 'stats', 200, 'GET', '/stats' ],
    [ 'metrics', 200, 'GET', '/metrics' ],
    [ 'not found', 404, 'GET', '/nope' ],
    [ 'wrong method', 405, 'PUT', '/stats' ],);
for my $c (@cases)
{
    my ($name, $want, $method, $path, %o) = @$c;
    my $r = http($port, $method, $path, %o, timeout => 60);
    is($r->{status}, $want, "$name: $want") or diag $r->{body};
}
my $r = http($port, 'GET', '/events?limit=1', timeout => 60);
like($r->{headers}{link} // '', qr/rel="next"/, 'Link header');

my $chunk = sub {
    return "POST /publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
      . "Authorization: Bearer tok\r\nTransfer-Encoding: chunked\r\n\r\n"
      . join('', map { sprintf("%x\r\n%s\r\n", length $_, $_) } @_)
      . "0\r\n\r\n";
};
is(raw($port, $chunk->(event(event_id => 'c-1')), timeout => 60)->{status},
    200, 'chunked body');
is(raw($port, $chunk->(('z' x 30000) x 3), timeout => 60)->{status},
    413, 'chunked body over --max-body');
is( raw($port,
        "POST /publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tok\r\nContent-Length: 2\r\n"
          . "Content-Length: 2\r\n\r\n[]", timeout => 60)->{status},
    400, 'duplicate Content-Length');

# a PostgreSQL restart: 503, then reconnect
$node->stop('fast');
$r = http($port, 'POST', '/publish', body => event(), %auth, timeout => 60);
is($r->{status}, 503, 'database down: 503');
is(wait_healthz($port, 503, 60)->{status}, 503,
    'database down: healthz 503');
$node->start;
is(wait_healthz($port, 200, 60)->{status}, 200, 'reconnected');
for (1 .. 5)
{
    $r = http($port, 'POST', '/publish', body => event(), %auth, timeout => 60);
    last if $r->{status} == 200;
}
is($r->{status}, 200, 'publish after restart');

my $rc = stop_sidecar($sc, 120);
is($rc, 0, 'valgrind: no errors, no leaks, exit 0');
my $vlog = -e "$sc->{log}.valgrind" ? slurp_file("$sc->{log}.valgrind") : '';
is($vlog, '', 'valgrind log is empty') or diag $vlog;

done_testing();
