# GET /openapi.json, and real answers of every route and error class checked
# against it (tools/openapi_check.py, JSON Schema 2020-12), so the document
# cannot drift from the code: each answer must be one the document describes,
# and every status it describes must be seen.
use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 't';
use AggrTest qw(wait_for);
use SidecarTest qw(new_node start_redis stop_redis start_sidecar stop_sidecar http json wait_healthz);

my $repo = abs_path(dirname(__FILE__) . '/..');
my $event = '{"topic":"api","event_id":"%s","timestamp":"2025-10-24T00:00:00Z","source":"s","payload":{"n":1}}';
my @answers;

# one request; its answer is kept for the check
sub ask
{
    my ($port, $method, $target, %o) = @_;
    my $r = http($port, $method, $target, %o);
    my ($path) = $target =~ /^([^?]*)/;
    push @answers, { method => $method, path => $path, status => $r->{status},
        headers => $r->{headers}, body => $r->{body} };
    return $r;
}

# direct mode, with both tokens
my $node = new_node('openapi', 'aggr.max_request_events' => 100);
my $sc = start_sidecar($node, args => [ '--token=w', '--read-token=r', '--max-body=64K', '--max-streams=1' ]);
my $port = $sc->{port};
wait_healthz($port);
my %w = (headers => { Authorization => 'Bearer w' });
my %r = (headers => { Authorization => 'Bearer r' });

my $doc = ask($port, 'GET', '/openapi.json');
is($doc->{status}, 200, 'GET /openapi.json');
is_deeply(json($doc), decode_json(slurp_file("$repo/sidecar/openapi.json")),
    'it serves sidecar/openapi.json as it is in the tree');

ask($port, 'POST', '/publish', body => '[' . join(',', map { sprintf($event, "e$_") } 1 .. 3) . ']', %w);
ask($port, 'POST', '/publish', body => '{"topic": ', %w);                                  # 400
ask($port, 'POST', '/publish', body => sprintf($event, 'x'));                              # 401
ask($port, 'GET', '/publish');                                                             # 405
ask($port, 'POST', '/publish', body => 'x' x 70000, %w);                                   # 413
ask($port, 'POST', '/publish', body => '[' . join(',', map { sprintf($event, "m$_") } 1 .. 101) . ']', %w);  # 413
ask($port, 'POST', '/publish', body => sprintf($event, 'x'),
    headers => { Authorization => 'Bearer w', 'Content-Encoding' => 'br' });                # 415
ask($port, 'POST', '/publish', body => '{"topic": "api", "event_id": 1, "timestamp": 0, "source": "s"}', %w);  # 422
ask($port, 'GET', '/events?limit=2', %r);                                                  # 200 + Link
ask($port, 'GET', '/events?limit=0', %r);                                                  # 400
ask($port, 'GET', '/events');                                                              # 401
ask($port, 'POST', '/events', body => '', %r);                                             # 405
ask($port, 'GET', '/events/stream?after=0', %r, timeout => 1);                           # 200, open
ask($port, 'GET', '/events/stream', %r, timeout => 1);    # 503: --max-streams (the first is open until a heartbeat)
ask($port, 'GET', '/events/stream?after=x', %r);                                           # 400
ask($port, 'GET', '/events/stream');                                                       # 401
ask($port, 'POST', '/events/stream', body => '', %r);                                      # 405
ask($port, 'GET', '/stats', %r);
ask($port, 'GET', '/stats');                                                               # 401
ask($port, 'POST', '/stats', body => '');                                                  # 405
ask($port, 'GET', '/healthz');
ask($port, 'POST', '/healthz', body => '');                                                # 405
ask($port, 'GET', '/metrics');
ask($port, 'POST', '/metrics', body => '');                                                # 405
ask($port, 'POST', '/openapi.json', body => '');                                           # 405
ask($port, 'GET', '/nowhere');                                                             # 404
ok((grep { $_->{path} eq '/events' && $_->{status} == 200 && $_->{headers}{link} } @answers),
    'a page full by count carried Link');

# the database down: 503s
$node->stop('fast');
ask($port, 'POST', '/publish', body => sprintf($event, 'down'), %w);
ask($port, 'GET', '/events', %r);
ask($port, 'GET', '/stats', %r);
wait_healthz($port, 503, 10);
# (an EventSource gives up on a 503: the stream is a 200 that says retry)
ok(wait_for(sub { http($port, 'GET', '/events/stream', %r, timeout => 1)->{body} =~ /not connected to the database yet; retrying/ }, 10),
    'the event stream answers 200 with a final event while the database is down');
ask($port, 'GET', '/events/stream', %r, timeout => 1);                                     # 200, ended
ask($port, 'GET', '/healthz');
stop_sidecar($sc);

# broker mode: 202
$node->start;
my $redis = start_redis();
my $bnode = new_node('openapi_broker', 'aggr.broker_url' => $redis->{url}, 'aggr.worker_count' => 1);
my $bsc = start_sidecar($bnode);
wait_healthz($bsc->{port}, 200, 60);
ask($bsc->{port}, 'POST', '/publish', body => sprintf($event, 'q1'));
ask($bsc->{port}, 'GET', '/stats');
ask($bsc->{port}, 'GET', '/healthz');
stop_sidecar($bsc);

my $file = $node->basedir . '/answers.json';
open(my $fh, '>', $file) or die;
print $fh JSON::PP->new->encode(\@answers);
close $fh;
my $out = `/usr/bin/python3 $repo/tools/openapi_check.py $repo/sidecar/openapi.json $file 2>&1`;
is($?, 0, 'every answer is one the document describes, and every documented status was seen')
  or diag($out);
like($out, qr/0 problems$/m, 'the checker says so') or diag($out);
note($out);

$bnode->stop;
$node->stop;
stop_redis($redis);
done_testing();
