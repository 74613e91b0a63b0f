# 050_publisher_redis.pl: aggr-publisher end to end, without PostgreSQL.
# --via redis against a real redis-server: exactly the events on the list,
# well-formed, the right number distinct, re-sends byte-identical, seeds
# reproducible.  --via http against a small HTTP responder written here,
# which can answer 503 + Retry-After, 422, or drop the connection: retries,
# Retry-After, the give-up bound, --wait-ready, --verify and the ledger.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use AggrTest qw(start_redis stop_redis redis_cmd wait_for);
use IO::Select;
use IO::Socket::INET;
use IPC::Run ();
use JSON::PP;
use POSIX ();
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);

my $publisher = $ENV{AGGR_PUBLISHER} || "$FindBin::RealBin/../publisher/aggr-publisher";
my $tmp = PostgreSQL::Test::Utils::tempdir('publisher');
my $J = JSON::PP->new->canonical;

ok(-x $publisher, "aggr-publisher is built at $publisher")
  or die "aggr-publisher is missing: run make -C publisher\n";

# Runs the publisher; returns (exit code, stdout, stderr).
sub publish
{
    my @args = @_;
    my ($out, $err) = ('', '');
    IPC::Run::run([ $publisher, @args ], '<', \undef, '>', \$out, '2>', \$err);
    return ($? >> 8, $out, $err);
}

# Ledger lines as [topic, event_id, outcome].
sub read_ledger
{
    my ($file) = @_;
    open(my $fh, '<', $file) or die "$file: $!";
    my @rows = map { chomp; [ split /\t/ ] } <$fh>;
    close $fh;
    return @rows;
}

sub distinct_keys
{
    my %k = map { ("$_->[0]\t$_->[1]" => 1) } @_;
    return scalar keys %k;
}

# ---------------------------------------------------------------- Redis

my $redis = start_redis();
my $rurl = "redis://127.0.0.1:$redis->{port}";
my %event_keys = (topic => 1, event_id => 1, timestamp => 1, source => 1, payload => 1);

{
    my ($rc, $out, $err) = publish('--via', $rurl, '--events', 1000,
        '--dup-ratio', 0.35, '--ledger', "$tmp/redis.ledger", '--json');
    is($rc, 0, 'redis: exit 0') or diag($out, $err);
    my $sum = $J->decode($out);
    is_deeply([ @$sum{qw(acked accepted expected_unique expected_duplicates)} ],
        [ 1000, 1000, 650, 350 ], 'redis: summary counts');

    is(redis_cmd($redis, 'LLEN', 'aggregator:events'), 1000, 'redis: 1000 elements on the list');
    my $list = redis_cmd($redis, 'LRANGE', 'aggregator:events', 0, -1);
    my (%copies, $bad);
    for my $elem (@$list)
    {
        my $ev = eval { $J->decode($elem) };
        if (!$ev || ref $ev ne 'HASH'
            || join(',', sort keys %$ev) ne join(',', sort keys %event_keys)
            || $ev->{topic} !~ /^topic_[0-9]$/
            || $ev->{event_id} !~ /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/
            || $ev->{timestamp} !~ /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/
            || $ev->{source} ne 'aggr-publisher'
            || ref $ev->{payload} ne 'HASH')
        {
            $bad++;
            diag("malformed element: $elem") if $bad <= 3;
            next;
        }
        push @{ $copies{"$ev->{topic}\t$ev->{event_id}"} }, $elem;
    }
    ok(!$bad, 'redis: every element is a well-formed event');
    is(scalar keys %copies, 650, 'redis: 650 distinct (topic, event_id)');
    is(scalar(grep { my $c = $_; grep { $_ ne $c->[0] } @$c } values %copies), 0,
        'redis: every re-send is byte-identical to its original');

    my @ledger = read_ledger("$tmp/redis.ledger");
    is(scalar @ledger, 1000, 'redis: one ledger line per event');
    is(scalar(grep { $_->[2] ne 'acked' } @ledger), 0, 'redis: every event acked');
    is_deeply([ sort map { "$_->[0]\t$_->[1]" } @ledger ],
        [ sort map { my $k = $_; ($k) x @{ $copies{$k} } } keys %copies ],
        'redis: the ledger names exactly the events on the list');
}

# same seed, same events; another seed, other events; a database and key
{
    # "topic/event_id" of each element of list $key in database $db
    my $ids = sub {
        my ($key, $db) = @_;
        my $s = IO::Socket::INET->new(PeerAddr => "127.0.0.1:$redis->{port}")
          or die "connect: $!";
        print $s "SELECT " . ($db // 0) . "\r\nLRANGE $key 0 -1\r\n";
        AggrTest::read_resp($s);
        my $list = AggrTest::read_resp($s);
        close $s;
        return [ map { my $e = $J->decode($_); "$e->{topic}/$e->{event_id}" } @$list ];
    };
    my ($rc) = publish('--via', $rurl, '--events', 1000, '--quiet',
        '--queue-key', 'again');
    is($rc, 0, 'redis: second run with the default seed');
    is_deeply($ids->('again'), $ids->('aggregator:events'),
        'redis: same seed, same events in the same order');

    ($rc) = publish('--via', "$rurl/3", '--events', 1000, '--quiet', '--seed', 7,
        '--queue-key', 'other');
    is($rc, 0, 'redis: a run with seed 7 into database 3');
    is(redis_cmd($redis, 'EXISTS', 'other'), 0, 'redis: nothing went to database 0');
    my %first = map { ($_ => 1) } @{ $ids->('aggregator:events') };
    my $other = $ids->('other', 3);
    is(scalar @$other, 1000, 'redis: 1000 elements in database 3');
    is(scalar(grep { $first{$_} } @$other), 0, 'redis: another seed shares no event');
}

# Redis gone: retried, then given up within the bound; the ledger says failed
my $dead_port = $redis->{port};
stop_redis($redis);
{
    my $t0 = time();
    my ($rc, $out, $err) = publish('--via', "redis://127.0.0.1:$dead_port",
        '--events', 100, '--batch', 50, '--max-retry-time', 1,
        '--ledger', "$tmp/dead.ledger", '--json');
    is($rc, 1, 'redis down: exit 1');
    my $sum = $J->decode($out);
    ok($sum->{retries} > 0, "redis down: retried ($sum->{retries} retries)");
    is(scalar @{ $sum->{failed_batches} }, 2, 'redis down: both batches listed as failed');
    like($sum->{failed_batches}[0]{error}, qr/connect/, 'redis down: the reason is given');
    ok(time() - $t0 < 10, 'redis down: gave up within the bound');
    my @ledger = read_ledger("$tmp/dead.ledger");
    is_deeply([ map { $_->[2] } @ledger ], [ ('failed') x 100 ],
        'redis down: never connected, so every event failed');
}

# ---------------------------------------------------------------- HTTP

# A small HTTP/1.1 server in a child process, keep-alive and several
# connections at once.  It keeps aggr's counters for /stats and logs one line
# per request ("time method path status events") and one per accepted event.
sub start_responder
{
    my (%behave) = @_;
    my $listen = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1',
        LocalPort => 0,
        Listen    => 64,
        ReuseAddr => 1,
        Proto     => 'tcp') or die "listen: $!";
    my $port = $listen->sockport;
    my $log = "$tmp/responder.$port.log";
    my $pid = fork() // die "fork: $!";
    if ($pid == 0)
    {
        eval { serve($listen, $log, \%behave) };
        POSIX::_exit(0);
    }
    close $listen;
    return { pid => $pid, port => $port, log => $log, url => "http://127.0.0.1:$port" };
}

sub stop_responder
{
    my ($h) = @_;
    kill 'TERM', $h->{pid};
    waitpid($h->{pid}, 0);
}

sub serve
{
    my ($listen, $logfile, $b) = @_;
    open(my $log, '>>', $logfile) or die;
    $log->autoflush(1);
    my $sel = IO::Select->new($listen);
    my (%in, %seen);
    my %n = (received => 0, unique => 0, duplicates => 0, posts => 0, healthz => 0);
    while (1)
    {
        for my $fh ($sel->can_read(1))
        {
            if ($fh == $listen)
            {
                my $c = $listen->accept or next;
                $sel->add($c);
                $in{ fileno $c } = '';
                next;
            }
            my $got = sysread($fh, my $chunk, 65536);
            if (!$got)
            {
                $sel->remove($fh);
                delete $in{ fileno $fh };
                close $fh;
                next;
            }
            $in{ fileno $fh } .= $chunk;
            while (my $req = take_request(\$in{ fileno $fh }))
            {
                my ($status, $body, $extra, $events) = answer($req, $b, \%n, \%seen, $log);
                printf $log "%.3f %s %s %s %d\n", time(), $req->{method}, $req->{path},
                  $status // 'drop', $events // 0;
                if (!defined $status)
                {
                    $sel->remove($fh);
                    delete $in{ fileno $fh };
                    close $fh;
                    last;
                }
                syswrite($fh, "HTTP/1.1 $status X\r\nContent-Type: application/json\r\n"
                      . "Content-Length: " . length($body) . "\r\n$extra\r\n$body");
            }
        }
    }
}

# Takes one complete request off the front of $$buf, or returns undef.
sub take_request
{
    my ($buf) = @_;
    my $end = index($$buf, "\r\n\r\n");
    return undef if $end < 0;
    my ($line, @lines) = split /\r\n/, substr($$buf, 0, $end);
    my %h = map { /^([^:]+):\s*(.*)$/ ? (lc $1, $2) : () } @lines;
    my $len = $h{'content-length'} // 0;
    return undef if length($$buf) < $end + 4 + $len;
    my ($method, $path) = split / /, $line;
    my $req = { method => $method, path => $path, headers => \%h,
        body => substr($$buf, $end + 4, $len) };
    substr($$buf, 0, $end + 4 + $len) = '';
    return $req;
}

# (status or undef to drop the connection, body, extra header lines, events)
sub answer
{
    my ($req, $b, $n, $seen, $log) = @_;
    my $auth = $req->{headers}{authorization} // '';
    return (401, '{"error":"bad token"}', '') if $b->{token} && $auth ne "Bearer $b->{token}";
    if ($req->{path} eq '/healthz')
    {
        return (503, '{"status":"starting"}', '') if ++$n->{healthz} <= ($b->{unready} // 0);
        return (200, '{"status":"ok"}', '');
    }
    if ($req->{path} eq '/stats')
    {
        return (200, $J->encode({ received => $n->{received},
            unique_processed => $n->{unique}, duplicate_dropped => $n->{duplicates},
            topics => [], uptime_seconds => 1, worker_count => 1 }), '');
    }
    return (404, '{"error":"not found"}', '') if $req->{path} ne '/publish';
    $n->{posts}++;
    return (undef) if $b->{drop};
    return (503, '{"error":"queue full"}', "Retry-After: 1\r\n")
      if $n->{posts} <= ($b->{fail_first} // 0);
    return ($b->{always}, '{"error":"no"}', '') if $b->{always};
    my $events = eval { $J->decode($req->{body}) };
    return (400, '{"error":"malformed JSON"}', '') unless ref $events eq 'ARRAY' && @$events;
    for my $i (0 .. $#$events)
    {
        my $e = $events->[$i];
        return (422, "{\"error\":\"bad event\",\"index\":$i}", '')
          unless ref $e eq 'HASH'
          && (grep { defined $e->{$_} && !ref $e->{$_} } qw(topic event_id timestamp source)) == 4
          && ref $e->{payload} eq 'HASH';
    }
    my ($u, $d) = (0, 0);
    for my $e (@$events)
    {
        my $k = "$e->{topic}\t$e->{event_id}";
        $seen->{$k}++ ? $d++ : $u++;
        print $log "EV\t$k\n";
    }
    $n->{received} += @$events;
    $n->{unique} += $u;
    $n->{duplicates} += $d;
    return (200, $J->encode({ accepted => scalar @$events, worker_count => 1,
        unique => $u, duplicates => $d }), '', scalar @$events);
}

sub responder_log
{
    my ($h) = @_;
    open(my $fh, '<', $h->{log}) or die;
    my @lines = <$fh>;
    close $fh;
    chomp @lines;
    return ([ map { [ split / / ] } grep { !/^EV\t/ } @lines ],
        [ map { my (undef, $t, $id) = split /\t/; "$t\t$id" } grep { /^EV\t/ } @lines ]);
}

my @http = ('--events', 1000, '--dup-ratio', 0.35, '--batch', 250,
    '--concurrency', 2, '--token', 'sesame');

# two 503s with Retry-After, then 200s: retried, and Retry-After honoured
{
    my $h = start_responder(fail_first => 2, unready => 2, token => 'sesame');
    my ($rc, $out, $err) = publish('--url', $h->{url}, @http, '--wait-ready', 10,
        '--verify', '--ledger', "$tmp/http.ledger", '--json');
    is($rc, 0, 'http: exit 0 after two 503s') or diag($out, $err);
    my $sum = $J->decode($out);
    is($sum->{retries}, 2, 'http: the two refused requests were retried');
    is_deeply([ @$sum{qw(acked accepted server_unique server_duplicates)} ],
        [ 1000, 1000, 650, 350 ], 'http: acked 1000, answers counted 650 unique + 350 duplicates');
    ok($sum->{verify}{ok}, 'http: --verify passed')
      or diag(join("\n", @{ $sum->{verify}{checks} }));
    like(join("\n", @{ $sum->{verify}{checks} }), qr/this is a first run/,
        'http: --verify says it was a first run');

    my ($reqs, $accepted) = responder_log($h);
    my @posts = grep { $_->[1] eq 'POST' } @$reqs;
    my @healthz = grep { $_->[2] eq '/healthz' } @$reqs;
    is(scalar @healthz, 3, 'http: --wait-ready polled /healthz until 200');
    is_deeply([ map { $_->[3] } @posts ], [ 503, 503, (200) x 4 ], 'http: 503, 503, then four 200s');
    ok($posts[2][0] - $posts[1][0] >= 0.95,
        sprintf('http: no request within Retry-After (waited %.2f s)', $posts[2][0] - $posts[1][0]));

    my @ledger = read_ledger("$tmp/http.ledger");
    is(scalar @ledger, 1000, 'http: one ledger line per event');
    is(scalar(grep { $_->[2] ne 'acked' } @ledger), 0, 'http: every event acked');
    is_deeply([ sort map { "$_->[0]\t$_->[1]" } @ledger ], [ sort @$accepted ],
        'http: the ledger names exactly what the server accepted');
    is(distinct_keys(@ledger), 650, 'http: 650 distinct events');

    # the same seed again: all duplicates now, and --verify knows it
    ($rc, $out, $err) = publish('--url', $h->{url}, @http, '--verify', '--json');
    is($rc, 0, 'http: a repeat run verifies') or diag($out, $err);
    $sum = $J->decode($out);
    is_deeply([ @$sum{qw(server_unique server_duplicates)} ], [ 0, 1000 ],
        'http: a repeat run is all duplicates');
    like(join("\n", @{ $sum->{verify}{checks} }), qr/this is a repeat run/,
        'http: --verify says it was a repeat run');

    # --verify can fail: a wrong --expect-unique is reported, exit 1
    ($rc, $out, $err) = publish('--url', $h->{url}, @http, '--verify', '--expect-unique', 650);
    is($rc, 1, 'http: --verify with a wrong expectation exits 1');
    like($out, qr/FAIL unique_processed grew by 0 \(expected 650, from --expect-unique\)/,
        'http: and says what differs');
    stop_responder($h);
}

# a 422 is definitive: not retried, the batch failed, exit 1
{
    my $h = start_responder(always => 422);
    my ($rc, $out) = publish('--url', $h->{url}, @http, '--json', '--ledger', "$tmp/422.ledger");
    is($rc, 1, '422: exit 1');
    my $sum = $J->decode($out);
    is_deeply([ @$sum{qw(requests retries acked)} ], [ 4, 0, 0 ], '422: four requests, no retry');
    like($sum->{failed_batches}[0]{error}, qr/^HTTP 422/, '422: the reason is reported');
    is_deeply([ map { $_->[2] } read_ledger("$tmp/422.ledger") ], [ ('failed') x 1000 ],
        '422: every event failed');
    stop_responder($h);
}

# 503 without end: retried with backoff, given up at the bound, listed
{
    my $h = start_responder(always => 503);
    my $t0 = time();
    my ($rc, $out) = publish('--url', $h->{url}, @http, '--max-retry-time', 1.5,
        '--ledger', "$tmp/503.ledger");
    is($rc, 1, '503 forever: exit 1');
    ok(time() - $t0 < 10, '503 forever: gave up within the bound');
    like($out, qr/failed\s+batch 0 \(events 0-249\) after \d+ attempts: HTTP 503/,
        '503 forever: the failed batches are listed');
    like($out, qr/4 of 4 batches not acknowledged/, '503 forever: and counted');
    is_deeply([ map { $_->[2] } read_ledger("$tmp/503.ledger") ], [ ('failed') x 1000 ],
        '503 forever: every event failed (503 means not applied)');
    my ($reqs) = responder_log($h);
    ok(@$reqs > 4, 'http 503 forever: the server saw retries (' . scalar(@$reqs) . ' requests)');
    stop_responder($h);
}

# the connection dropped after the request was sent: outcome unknown; the
# server failing for the whole bound stops the run, the rest never sent
{
    my $h = start_responder(drop => 1);
    my ($rc, $out) = publish('--url', $h->{url}, @http, '--concurrency', 1,
        '--max-retry-time', 1, '--ledger', "$tmp/drop.ledger", '--json');
    is($rc, 1, 'dropped: exit 1');
    my $sum = $J->decode($out);
    is_deeply([ @$sum{qw(unknown failed)} ], [ 250, 750 ],
        'dropped: batch 0 unknown, the three never sent failed');
    like($sum->{failed_batches}[1]{error}, qr/not sent: the server kept failing/,
        'dropped: the run stopped after one retry bound, not one per batch');
    is_deeply([ map { $_->[2] } read_ledger("$tmp/drop.ledger") ],
        [ ('unknown') x 250, ('failed') x 750 ], 'dropped: the ledger agrees');
    my ($reqs) = responder_log($h);
    is(scalar(grep { $_->[3] ne 'drop' } @$reqs), 0, 'dropped: no request was answered');
    stop_responder($h);
}

# --wait-ready is bounded
{
    my $t0 = time();
    my ($rc, $out, $err) = publish('--url', "http://127.0.0.1:$dead_port", '--wait-ready', 1);
    is($rc, 2, 'wait-ready: exit 2 when nothing answers');
    like($err, qr/not ready after 1 s/, 'wait-ready: says so');
    ok(time() - $t0 < 5, 'wait-ready: within its bound');
}

done_testing();
