# 040_sidecar.pl: aggr-sidecar end to end against a real PostgreSQL with aggr:
# every route, shape and status code, the 12 behaviours of the replaced
# service's seed tests, the access log, a PostgreSQL restart and SIGTERM.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use AggrTest qw(wait_for);
use IO::Socket::INET;
use JSON::PP;
use POSIX ();
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use SidecarTest qw(new_node start_redis stop_redis check_invariants
  start_sidecar stop_sidecar http json wait_healthz);
use Test::More;
use Time::HiRes qw(time);

my $J = JSON::PP->new->canonical;

sub event
{
    my ($topic, $id, %extra) = @_;
    return {
        topic     => $topic,
        event_id  => $id,
        timestamp => '2025-10-24T00:00:00Z',
        source    => 'tap',
        payload   => { n => 1 },
        %extra
    };
}

sub publish
{
    my ($port, $body, %o) = @_;
    $body = $J->encode($body) if ref $body;
    return http($port, 'POST', '/publish', body => $body, %o);
}

sub stats
{
    my ($port) = @_;
    return json(http($port, 'GET', '/stats'));
}

my $node = new_node('sidecar');
my $sc = start_sidecar($node, args => ['--threads=2']);
my $port = $sc->{port};

# --help
my $bin = $ENV{AGGR_SIDECAR} || "$FindBin::RealBin/../sidecar/aggr-sidecar";
my $help = `$bin --help`;
is($? >> 8, 0, '--help exits 0');
like($help, qr/--listen.*--db.*--threads.*--max-body.*--token/s,
    '--help lists the flags');

# seed 9: /healthz 200
my $r = wait_healthz($port, 200, 30);
is($r->{status}, 200, 'healthz 200');
my $h = json($r);
is($h->{status},   'ok', 'healthz status ok');
is($h->{database}, 'ok', 'healthz database ok');
is($h->{broker}, 'disabled', 'healthz broker disabled in direct mode');
like($r->{headers}{'content-type'}, qr{^application/json}, 'healthz is JSON');

# seed 1: single event accepted and visible in /events
$r = publish($port, event('orders', 'e-1'));
is($r->{status}, 200, 'single event: 200 in direct mode');
is_deeply(json($r),
    { accepted => 1, unique => 1, duplicates => 0, worker_count => 0 },
    'single event: answer shape')
  or diag $r->{body};
$r = http($port, 'GET', '/events');
is($r->{status}, 200, 'events 200');
my $ev = json($r);
is(ref $ev, 'ARRAY', 'events is a plain array');
is(scalar @$ev, 1, 'one event stored');
is_deeply([ sort keys %{ $ev->[0] } ],
    [qw(event_id ingested_at payload source timestamp topic)],
    'event keys');
is($ev->[0]{timestamp}, '2025-10-24T00:00:00+00:00', 'timestamp rendered in UTC');
like($ev->[0]{ingested_at}, qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?\+00:00$/,
    'ingested_at rendered in UTC');
is_deeply($ev->[0]{payload}, { n => 1 }, 'payload kept as JSON');

# seed 2: batch of 7 with 2 repeats
my $before = stats($port);
my @batch = map { event('orders', "b-$_") } (1 .. 5);
push @batch, event('orders', 'b-1'), event('orders', 'b-2');
$r = publish($port, \@batch);
is($r->{status}, 200, 'batch of 7: 200');
is_deeply(json($r),
    { accepted => 7, unique => 5, duplicates => 2, worker_count => 0 },
    'batch of 7: 5 unique, 2 duplicates');
my $after = stats($port);
is($after->{duplicate_dropped} - $before->{duplicate_dropped},
    2, 'duplicate_dropped grew by 2');
is($after->{received} - $before->{received}, 7, 'received grew by 7');

# seed 3: [] → 400; error shape
$r = publish($port, '[]');
is($r->{status}, 400, '[] → 400');
my $e = json($r);
ok(defined $e->{error} && length $e->{error}, '[]: error message');
like($e->{sqlstate}, qr/^[0-9A-Z]{5}$/, '[]: sqlstate');
ok(exists $e->{detail}, '[]: detail key');

# seed 4: missing event_id → 422 naming index and field
my %noid = %{ event('orders', 'x') };
delete $noid{event_id};
$r = publish($port, [ event('orders', 'ok-1'), \%noid ]);
is($r->{status}, 422, 'missing event_id → 422');
like(json($r)->{error}, qr/1.*event_id|event_id.*1/, '422 names index 1 and event_id')
  or diag $r->{body};
is($node->safe_psql('postgres',
        "SELECT count(*) FROM aggr.events WHERE event_id = 'ok-1'"),
    0, 'all or nothing: the valid event of a rejected request is not stored');

# seed 5: ?topic= filter
publish($port, [ event('payments', 'p-1'), event('payments', 'p-2') ]);
$ev = json(http($port, 'GET', '/events?topic=payments'));
is(scalar @$ev, 2, 'topic filter: 2 payments');
is_deeply([ map { $_->{topic} } @$ev ], [qw(payments payments)],
    'topic filter: only that topic');
is_deeply([ map { $_->{event_id} } @$ev ], [qw(p-1 p-2)], 'oldest first');

# seed 6: /stats topic counts and worker_count
my $st = stats($port);
my %tc = map { $_->{topic} => $_->{count} } @{ $st->{topics} };
is_deeply(\%tc, { orders => 6, payments => 2 }, 'stats topic counts');
ok(exists $st->{worker_count}, 'stats has worker_count');
for my $k (qw(received unique_processed duplicate_dropped uptime_seconds))
{
    ok(exists $st->{$k}, "stats has $k");
}

# seed 10: text/plain body not-json → 400
$r = publish($port, 'not-json', headers => { 'Content-Type' => 'text/plain' });
is($r->{status}, 400, 'text/plain not-json → 400');
is(json($r)->{sqlstate}, '22P02', 'not-json: 22P02 from PostgreSQL');

# seed 7: the same event from 5 × 20 concurrent requests → one row, 99 dups
$before = stats($port);
my @kids;
for my $k (1 .. 5)
{
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0)
    {
        my $bad = 0;
        for (1 .. 20)
        {
            my $x = publish($port, event('race', 'same'));
            $bad++ unless $x->{status} == 200;
        }
        POSIX::_exit($bad > 255 ? 255 : $bad);
    }
    push @kids, $pid;
}
my $failed = 0;
for (@kids)
{
    waitpid($_, 0);
    $failed += $? >> 8;
}
is($failed, 0, '100 concurrent publishes all answered 200');
is($node->safe_psql('postgres',
        "SELECT count(*) FROM aggr.events WHERE topic = 'race'"),
    1, 'one row for the raced event');
$after = stats($port);
is($after->{duplicate_dropped} - $before->{duplicate_dropped},
    99, '99 duplicates counted');
check_invariants($node, 'after the race');

# pagination: limit, Link header, after
$r = http($port, 'GET', '/events?topic=orders&limit=2');
is($r->{status}, 200, 'events with limit');
is(scalar @{ json($r) }, 2, 'limit=2 gives 2');
my ($next) = ($r->{headers}{link} // '') =~ /^<([^>]+)>; rel="next"$/;
ok($next, 'full page carries Link rel=next') or diag explain $r->{headers};
like($next // '', qr{^/events\?topic=orders&limit=2&after=\d+$}, 'Link target');
my @seen = map { $_->{event_id} } @{ json($r) };
while ($next)
{
    $r = http($port, 'GET', $next);
    push @seen, map { $_->{event_id} } @{ json($r) };
    ($next) = ($r->{headers}{link} // '') =~ /^<([^>]+)>/;
}
is_deeply(\@seen, [qw(e-1 b-1 b-2 b-3 b-4 b-5)], 'pages walk every event once');
$r = http($port, 'GET', '/events?topic=a%20b%2Fc&limit=1');
is($r->{status}, 200, 'topic with reserved characters');
publish($port, event('a b/c&d', 'enc-1'));
$r = http($port, 'GET', '/events?topic=a%20b%2Fc%26d&limit=1');
like($r->{headers}{link} // '', qr{^</events\?topic=a%20b%2Fc%26d&limit=1&after=\d+>},
    'Link URL-encodes the topic');
$r = http($port, 'GET', '/events?limit=100');
ok(!exists $r->{headers}{link}, 'no Link when the page is not full');

for my $q ('limit=0', 'limit=10001', 'limit=abc', 'limit=', 'limit=1.5',
    'limit=-3', 'after=x', 'after=-1', 'after=99999999999999999999')
{
    $r = http($port, 'GET', "/events?$q");
    is($r->{status}, 400, "events?$q → 400");
    ok(defined json($r)->{error}, "events?$q: JSON error");
}
$r = http($port, 'GET', '/events?limit=10000&after=0');
is($r->{status}, 200, 'limit=10000 is allowed');

# 404, 405 with Allow, HEAD
$r = http($port, 'GET', '/nope');
is($r->{status}, 404, 'unknown route 404');
ok(defined json($r)->{error}, '404 body is JSON');
$r = http($port, 'GET', '/publish');
is($r->{status}, 405, 'GET /publish 405');
is($r->{headers}{allow}, 'POST', '405 Allow: POST');
ok(defined json($r)->{error}, '405 body is JSON');
for my $route (qw(/events /stats /healthz /metrics))
{
    $r = http($port, 'POST', $route, body => '{}');
    is($r->{status}, 405, "POST $route 405");
    is($r->{headers}{allow}, 'GET, HEAD', "POST $route Allow");
}
$r = http($port, 'DELETE', '/events');
is($r->{status}, 405, 'DELETE /events 405');
$r = http($port, 'HEAD', '/stats');
is($r->{status}, 200, 'HEAD /stats 200');

# where to listen, from the environment
for my $var (qw(PORT LISTEN_ADDR))
{
    my $e = start_sidecar($node, listen_env => $var);
    is(http($e->{port}, 'GET', '/healthz')->{status}, 200, "listens on $var");
    is(stop_sidecar($e), 0, "$var sidecar exits 0");
}

# 413 from Content-Length, before the body
my $small = start_sidecar($node, args => ['--max-body=1024']);
$r = publish($small->{port}, 'x' x 2000);
is($r->{status}, 413, 'body over --max-body → 413');
ok(defined json($r)->{error}, '413 body is JSON');
$r = publish($small->{port}, event('small', 's-1'));
is($r->{status}, 200, 'body under --max-body accepted');
is(stop_sidecar($small), 0, 'small sidecar exits 0');

# too many events in one request → 413 (54000, aggr.max_request_events)
$node->safe_psql('postgres', 'ALTER SYSTEM SET aggr.max_request_events = 50');
$node->reload;
$r = undef;
for (1 .. 50)
{
    # a new GUC value reaches each pooled backend at its next statement
    $r = publish($port, [ map { event('many', "m-$_") } 1 .. 51 ]);
    last if $r->{status} == 413;
}
is($r->{status}, 413, 'more than aggr.max_request_events → 413');
is(json($r)->{sqlstate}, '54000', '413 carries 54000');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET aggr.max_request_events');
$node->reload;

# 401 with a token (flag and environment)
my $tok = start_sidecar($node, env => { AGGR_TOKEN => 's3cret' });
$r = publish($tok->{port}, event('tok', 't-1'));
is($r->{status}, 401, 'no token → 401');
is($r->{headers}{'www-authenticate'}, 'Bearer', '401 WWW-Authenticate');
ok(defined json($r)->{error}, '401 body is JSON');
$r = publish($tok->{port}, event('tok', 't-1'),
    headers => { Authorization => 'Bearer wrong!' });
is($r->{status}, 401, 'wrong token → 401');
$r = publish($tok->{port}, event('tok', 't-1'),
    headers => { Authorization => 'Bearer s3cret' });
is($r->{status}, 200, 'right token → 200');
is(http($tok->{port}, 'GET', '/stats')->{status}, 200,
    'reads need no token');
is(stop_sidecar($tok), 0, 'token sidecar exits 0');

# /metrics
$r = http($port, 'GET', '/metrics');
is($r->{status}, 200, 'metrics 200');
like($r->{headers}{'content-type'}, qr{^text/plain; version=0\.0\.4}, 'metrics content type');
like($r->{body}, qr/^aggr_received_total \d+$/m, 'metrics: received');
like($r->{body}, qr/^aggr_unique_processed_total \d+$/m, 'metrics: unique');
like($r->{body}, qr/^aggr_duplicate_dropped_total \d+$/m, 'metrics: duplicates');
like($r->{body}, qr/^aggr_rejected_total \d+$/m, 'metrics: rejected');
like($r->{body}, qr/^aggr_topic_events\{topic="orders"\} 6$/m, 'metrics: per topic');
like($r->{body},
    qr/^aggr_http_requests_total\{route="\/publish",status="200"\} \d+$/m,
    'metrics: requests by route and status');
like($r->{body},
    qr/^aggr_http_requests_total\{route="\/publish",status="422"\} 1$/m,
    'metrics: 422 counted');
like($r->{body},
    qr/^aggr_http_request_duration_seconds_bucket\{route="\/publish",le="\+Inf"\} \d+$/m,
    'metrics: latency histogram');
like($r->{body}, qr/^aggr_database_up 1$/m, 'metrics: database up');

# retention: expired events leave /events; /stats and /metrics count them
$node->safe_psql('postgres', q{SELECT aggr_expire('0 s')});
$st = stats($port);
is($st->{expired}, $st->{unique_processed}, 'expired: /stats counts every expired event');
my ($orders) = grep { $_->{topic} eq 'orders' } @{ $st->{topics} };
is_deeply([ $orders->{count}, $orders->{expired} ], [ 6, 6 ], 'expired: per topic in /stats');
is_deeply(json(http($port, 'GET', '/events?topic=orders')), [], 'expired: gone from /events');
$r = http($port, 'GET', '/metrics');
like($r->{body}, qr/^aggr_expired_total $st->{expired}$/m, 'metrics: expired');
like($r->{body}, qr/^aggr_bulk_fallback_events_total $st->{bulk_fallback_events}$/m, 'metrics: events that took the INSERT statement');
like($r->{body}, qr/^# TYPE aggr_bulk_fallback_events_total counter$/m, 'metrics: which is a counter');
like($r->{body}, qr/^# TYPE aggr_topic_expired_total counter$/m, 'metrics: per-topic expired is a counter');
like($r->{body}, qr/^aggr_topic_expired_total\{topic="orders"\} 6$/m, 'metrics: expired per topic');
like($r->{body}, qr/^aggr_topic_events\{topic="orders"\} 6$/m, 'metrics: per-topic count unchanged');
$r = publish($port, event('orders', 'e-1'));
is(json($r)->{duplicates}, 1, 'expired: its key still deduplicates over HTTP');

# seed 12: a PostgreSQL restart keeps dedup and counters; the sidecar rides it
$before = stats($port);
my $rows = $node->safe_psql('postgres', 'SELECT count(*) FROM aggr.events');
$node->stop('fast');
my $t0 = time();
$r = publish($port, event('orders', 'e-1'), timeout => 10);
my $took = time() - $t0;
is($r->{status}, 503, 'database down: publish 503');
ok($took < 5, "database down: answered quickly (${took}s)");
ok(defined $r->{headers}{'retry-after'}, 'database down: Retry-After');
ok(defined json($r)->{error}, 'database down: JSON error');
$r = wait_healthz($port, 503, 10);    # answers are reused for up to a second
is($r->{status}, 503, 'database down: healthz 503');
is(json($r)->{database}, 'down', 'healthz names the database');
is(json($r)->{status}, 'down', 'healthz status down');
$r = http($port, 'GET', '/metrics');
like($r->{body}, qr/^aggr_database_up 0$/m, 'metrics while down');
$node->start;
$r = wait_healthz($port, 200, 30);
is($r->{status}, 200, 'healthz 200 again after the restart');
# connections the server closed are replaced before use: no stale 503
$r = publish($port, event('orders', 'e-1'));
is($r->{status}, 200, 'publish after restart, first try') or diag $r->{body};
is_deeply(json($r),
    { accepted => 1, unique => 0, duplicates => 1, worker_count => 0 },
    'dedup survives the restart');
$after = stats($port);
is($after->{unique_processed}, $before->{unique_processed}, 'unique kept');
is($after->{duplicate_dropped}, $before->{duplicate_dropped} + 1,
    'duplicates kept and counted');
is($node->safe_psql('postgres', 'SELECT count(*) FROM aggr.events'),
    $rows, 'rows kept');
check_invariants($node, 'after the restart');

# a backend killed with SIGKILL makes PostgreSQL restart every backend: the
# sidecar answers 200 or 503 throughout, never hangs, and what it
# acknowledged is stored
$node->safe_psql('postgres', 'ALTER SYSTEM SET restart_after_crash = on');
$node->reload;
ok( $node->poll_query_until(
        'postgres', "SELECT current_setting('restart_after_crash') = 'on'"),
    'restart_after_crash on');
my $acked = $node->basedir . '/crash_acked';
my $victim = $node->safe_psql('postgres',
    "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'aggr sidecar%' LIMIT 1");
my $loader = fork();
die "fork: $!" unless defined $loader;
if ($loader == 0)
{
    # publish until the crash was seen and 5 publishes succeeded after it
    my ($bad, $i, $down, $after) = (0, 0, 0, 0);
    my $deadline = time() + 60;
    open(my $fh, '>', $acked) or POSIX::_exit(255);
    $fh->autoflush(1);
    while (time() < $deadline && !($down && $after >= 5))
    {
        my $x = publish($port, event('crash', 'c-' . ++$i), timeout => 10);
        if ($x->{status} == 200)
        {
            print $fh "c-$i\n";
            $after++ if $down;
        }
        elsif ($x->{status} == 503)
        {
            $down = 1;
        }
        else
        {
            $bad++;
        }
    }
    close $fh;
    POSIX::_exit($bad > 0 || !$down || $after < 5 ? 1 : 0);
}
kill 'KILL', $victim;
waitpid($loader, 0);
is($? >> 8, 0, 'crash restart: only 200 and 503, then 200 again');
is(wait_healthz($port, 200, 60)->{status}, 200, 'crash restart: healthz 200 again');
my @acked = split /\n/, slurp_file($acked);
is($node->safe_psql('postgres',
        "SELECT count(*) FROM aggr.events WHERE topic = 'crash' AND event_id IN ('"
          . join("','", @acked) . "')"),
    scalar @acked, 'crash restart: every acknowledged event is stored');
check_invariants($node, 'after the crash restart');

# the access log: one JSON line per request
my @lines = grep { /"path"/ } split /\n/, slurp_file($sc->{log});
my $parsed = 0;
for (@lines)
{
    my $l = eval { decode_json($_) } or next;
    $parsed++
      if defined $l->{time}
      && defined $l->{method}
      && defined $l->{path}
      && defined $l->{status}
      && defined $l->{bytes}
      && defined $l->{duration_ms}
      && exists $l->{accepted};
}
ok(@lines > 100, 'access log has lines');
my @not_json = grep { !eval { decode_json($_) } } split /\n/, slurp_file($sc->{log});
is(scalar @not_json, 0, 'every stderr line is a JSON object')
  or diag join("\n", @not_json[ 0 .. ($#not_json < 4 ? $#not_json : 4) ]);
is($parsed, scalar @lines, 'every access-log line is JSON with all fields');
ok((grep { /"path":"\/publish","status":200,.*"accepted":7/ } @lines),
    'access log records the accepted count');

# the extension missing: healthz names it, publish is 503
$node->safe_psql('postgres', 'DROP EXTENSION aggr');
$r = wait_healthz($port, 503, 10);
is($r->{status}, 503, 'extension missing: healthz 503');
is_deeply(json($r), { status => 'down', database => 'ok', extension => 'missing' },
    'extension missing: healthz body');
$r = publish($port, event('orders', 'z'));
is($r->{status}, 503, 'extension missing: publish 503');
$node->safe_psql('postgres', 'CREATE EXTENSION aggr');
$r = wait_healthz($port, 200, 10);
is($r->{status}, 200, 'extension back: healthz 200');

# SIGTERM: new connections refused, in-flight requests answered, exit 0.
# A publish is held on a table lock while the signal arrives.
my $bg = $node->background_psql('postgres');
$bg->query_safe('BEGIN; LOCK TABLE aggr.events IN ACCESS EXCLUSIVE MODE;');
my $kid = fork();
die "fork: $!" unless defined $kid;
if ($kid == 0)
{
    my $x = publish($port, event('drain', 'd-1'), timeout => 60);
    POSIX::_exit($x->{status} == 200 ? 0 : 1);
}
ok( $node->poll_query_until(
        'postgres', q{
    SELECT count(*) > 0 FROM pg_stat_activity
     WHERE application_name LIKE 'aggr sidecar%' AND wait_event_type = 'Lock'}),
    'a publish waits on the lock');
is(http($port, 'GET', '/healthz')->{status},
    200, 'healthz answers from the other worker meanwhile');
kill 'TERM', $sc->{pid};
ok( wait_for(
        sub {
            !IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port);
        },
        10),
    'SIGTERM: new connections refused');
ok(kill(0, $sc->{pid}), 'SIGTERM: still draining the held request');
$bg->query_safe('COMMIT;');
$bg->quit;
waitpid($kid, 0);
is($? >> 8, 0, 'SIGTERM: the in-flight publish was answered 200');
is(stop_sidecar($sc), 0, 'SIGTERM: exit 0');
is($node->safe_psql('postgres',
        "SELECT count(*) FROM aggr.events WHERE topic = 'drain'"),
    1, 'SIGTERM: the drained publish is stored');
like(slurp_file($sc->{log}), qr/"msg":"stopped"/, 'SIGTERM: logged the stop');

# seed 8: queue overflow → 503 in broker mode (real Redis)
my $redis = start_redis();
my $bnode = new_node(
    'broker',
    'aggr.broker_url'    => $redis->{url},
    'aggr.worker_count'  => 1,
    'aggr.queue_maxsize' => 10);
my $bsc = start_sidecar($bnode);
$r = wait_healthz($bsc->{port}, 200, 60);
is($r->{status}, 200, 'broker mode: healthz 200');
is(json($r)->{broker}, 'ok', 'broker mode: broker ok');
$r = publish($bsc->{port}, [ map { event('q', "q-$_") } 1 .. 3 ]);
is($r->{status}, 202, 'broker mode: 202 queued');
is_deeply(json($r), { accepted => 3, worker_count => 1 }, 'broker mode: answer shape');
$r = publish($bsc->{port}, [ map { event('q', "over-$_") } 1 .. 11 ]);
is($r->{status}, 503, 'queue overflow → 503') or diag $r->{body};
is($r->{headers}{'retry-after'}, '1', 'queue overflow: Retry-After');
like(json($r)->{sqlstate}, qr/^53/, 'queue overflow: 53xxx');
ok($bnode->poll_query_until('postgres',
        "SELECT count(*) = 3 FROM aggr.events WHERE topic = 'q'"),
    'queued events are ingested by the worker');
stop_redis($redis);
$r = publish($bsc->{port}, event('q', 'q-down'), timeout => 30);
is($r->{status}, 503, 'Redis down: publish 503') or diag $r->{body};
ok(defined $r->{headers}{'retry-after'}, 'Redis down: Retry-After');
$r = wait_healthz($bsc->{port}, 503, 10);
is($r->{status}, 503, 'Redis down: healthz 503');
is(stop_sidecar($bsc), 0, 'broker sidecar exits 0');

done_testing();
