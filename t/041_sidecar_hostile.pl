# 041_sidecar_hostile.pl: a generated corpus of malformed and hostile
# requests against the real aggr-sidecar.  Each gets its 4xx (injection
# strings get 200 and are stored byte for byte), nothing half-applies, the
# sidecar never goes down, its memory stays flat, and 64 open connections
# cost at most 16 MB of RSS.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use Encode ();
use IO::Socket::INET;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use SidecarTest qw(new_node start_sidecar stop_sidecar http raw json rss_kb
  wait_healthz);
use Test::More;
use Time::HiRes ();

my $J = JSON::PP->new->canonical;
my $MAX_BODY = 1024 * 1024;

my $node = new_node('hostile', 'aggr.max_request_events' => 100);
my $sc = start_sidecar($node,
    args => [ "--max-body=$MAX_BODY", '--threads=2', '--timeout=5' ]);
my $port = $sc->{port};
is(wait_healthz($port, 200, 30)->{status}, 200, 'sidecar up');

sub event
{
    return {
        topic     => 'hostile',
        event_id  => 'h-1',
        timestamp => '2025-10-24T00:00:00Z',
        source    => 'tap',
        payload   => { k => 'v' },
        @_
    };
}

# a POST /publish with a correct Content-Length
sub post
{
    my ($body, @headers) = @_;
    return "POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
      . join('', map { "$_\r\n" } @headers)
      . 'Content-Length: ' . length($body) . "\r\n\r\n" . $body;
}

sub get
{
    my ($path) = @_;
    return "GET $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
}

sub chunked
{
    my (@chunks) = @_;
    return "POST /publish HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
      . "Transfer-Encoding: chunked\r\n\r\n"
      . join('', map { sprintf("%x\r\n%s\r\n", length $_, $_) } @chunks)
      . "0\r\n\r\n";
}

# [name, request bytes, expected status: a number, '4xx', or 'closed' (a 4xx
# or the connection closed without an answer)]
my @corpus;
sub case { push @corpus, [@_] }

# 1. truncated JSON: every prefix of a valid two-event request
my $valid = $J->encode([ event(event_id => 't-1'), event(event_id => 't-2') ]);
for (my $n = 0; $n < length $valid; $n += 2)
{
    case("truncated at $n", post(substr($valid, 0, $n)), 400);
}

# 2. not a request: scalars, empty array, whitespace, garbage
case("top-level $_", post($_), 400)
  for ('1', '"str"', 'null', 'true', 'false', '[]', '  ', '{', '}', ']',
    '[1,]', '{"topic":}', "{'topic':'x'}", 'NaN', '0x10', '{"a":1}{"b":2}',
    "\xEF\xBB\xBF{}", '[,]', '{"a" 1}', '/* c */ {}');
case("array of non-objects $_", post($_), 422)
  for ('[1]', '["x"]', '[null]', '[[]]', '[{}, 1]');

# 3. deep nesting: past PostgreSQL's stack depth (54001) or its parser
case('array nesting 3000', post(('[' x 3000) . (']' x 3000)), '4xx');
for my $d (20000, 100000)
{
    case("array nesting $d", post(('[' x $d) . (']' x $d)), 400);
    case("object nesting $d", post(('{"a":' x $d) . '1' . ('}' x $d)), 400);
    my $deep = ('{"a":' x $d) . '1' . ('}' x $d);
    (my $e = $J->encode(event(event_id => "deep-$d"))) =~ s/\{"k":"v"\}/$deep/;
    case("payload nesting $d", post($e), 400);
}
case('unclosed nesting', post('[' x 200000), 400);

# 4. bad UTF-8 in every string field, and in a key
my @bad_utf8 = ("\xFF", "\xC0\xAF", "\xED\xA0\x80", "\xE2\x82", "\xF8\x88\x80\x80\x80",
    "\x80", "a\xC3", "\xF4\x90\x80\x80");
for my $i (0 .. $#bad_utf8)
{
    my $b = $bad_utf8[$i];
    for my $f (qw(topic event_id source))
    {
        (my $body = $J->encode(event($f => 'PLACEHOLDER'))) =~ s/PLACEHOLDER/$b/;
        case("bad utf8 $i in $f", post($body), 400);
    }
    (my $body = $J->encode(event())) =~ s/"k"/"k$b"/;
    case("bad utf8 $i in payload key", post($body), 400);
}

# 5. \u0000 and lone surrogates, raw NUL and control bytes
for my $f (qw(topic event_id source))
{
    (my $body = $J->encode(event($f => 'X'))) =~ s/"X"/"a\\u0000b"/;
    case("\\u0000 in $f", post($body), 400);
    ($body = $J->encode(event($f => 'X'))) =~ s/"X"/"\\ud800"/;
    case("lone surrogate in $f", post($body), 400);
    ($body = $J->encode(event($f => 'X'))) =~ s/"X"/"a\x00b"/;
    case("raw NUL in $f", post($body), 400);
    ($body = $J->encode(event($f => 'X'))) =~ s/"X"/"a\x01b"/;
    case("raw control byte in $f", post($body), 400);
}
(my $nulpay = $J->encode(event())) =~ s/"v"/"\\u0000"/;
case('\u0000 in payload', post($nulpay), 400);
case('NUL after valid JSON', post($J->encode(event()) . "\x00"), 400);

# 6. wrong types: numbers as ids and the like
for my $f (qw(topic event_id source))
{
    for my $v ('1', '0', '-1', '1.5', '1e308', 'true', 'false', 'null', '[]', '{}',
        '""', '["x"]')
    {
        (my $body = $J->encode(event($f => 'X'))) =~ s/"X"/$v/;
        case("$f = $v", post($body), 422);
    }
    my %e = %{ event() };
    delete $e{$f};
    case("missing $f", post($J->encode(\%e)), 422);
}
for my $v ('"not-a-date"', '"2025-13-45T99:00:00Z"', 'true', '[]', '{}', '""',
    '1e300', 'null')
{
    (my $body = $J->encode(event(timestamp => 'X'))) =~ s/"X"/$v/;
    case("timestamp = $v", post($body), 422);
}
for my $v ('[]', '"s"', '1', 'true')
{
    (my $body = $J->encode(event())) =~ s/\{"k":"v"\}/$v/;
    case("payload = $v", post($body), 422);
}
my $bad3 = [ map { event(event_id => "i-$_") } 0 .. 4 ];
$bad3->[3]{event_id} = 42;
case('bad event at index 3', post($J->encode($bad3)), 422);
case('too many events', post($J->encode([ map { event(event_id => "m-$_") } 0 .. 100 ])),
    413);

# 7. huge strings
for my $len (129, 1000, 100_000, 900_000)
{
    for my $f (qw(topic event_id source))
    {
        case("$f of $len", post($J->encode(event($f => 'x' x $len))), 422);
    }
}
case('body just over --max-body', post('[' . ('x' x $MAX_BODY) . ']'), 413);
case('Content-Length over --max-body, no body',
    "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413);

# 8. framing: Content-Length and chunked bodies
my $ok = $J->encode(event(event_id => 'frame-1'));
case('duplicate Content-Length, same',
    "POST /publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
      . length($ok) . "\r\nContent-Length: " . length($ok) . "\r\n\r\n$ok", 400);
case('duplicate Content-Length, different',
    "POST /publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n"
      . "Content-Length: " . length($ok) . "\r\n\r\n$ok", 400);
case('Content-Length and chunked',
    "POST /publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n"
      . "Transfer-Encoding: chunked\r\n\r\n5\r\n[1,2]\r\n0\r\n\r\n", 400);
for my $cl ('abc', '-1', '1.5', '0x10', '')
{
    case("Content-Length '$cl'",
        "POST /publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: $cl\r\n\r\n[]",
        '4xx');
}
case('chunked, malformed JSON', chunked('{"topic":', '"x"'), 400);
case('chunked, scalar', chunked('4', '2'), 400);
case('chunked, over --max-body', chunked(('y' x 65536) x 17), 413);
case('chunked, bad size line',
    "POST /publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
      . "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", '4xx');
case('chunked, schema violation',
    chunked(substr($J->encode(event(event_id => 7)), 0, 10),
        substr($J->encode(event(event_id => 7)), 10)), 422);

# 9. methods, paths, query strings, headers
case("$_ /publish", "$_ /publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405)
  for qw(GET PUT PATCH DELETE OPTIONS HEAD);
case('GET /%70ublish%00x (MHD decodes the path)', get('/%70ublish%00x'), '4xx');
case("GET $_", get($_), 404)
  for ('/', '/publish/', '/Publish', '//publish', '/publish/..',
    '/events/1', '/stats.json', '/healthz/', '/metrics;x', '/' . ('a' x 2000));
case("GET /events?$_", get("/events?$_"), 400)
  for ('limit=abc', 'limit=-1', 'limit=0', 'limit=10001', 'limit=1e3',
    'limit=99999999999999999999', 'limit=%20', 'limit=0x10', 'after=-5', 'after=x',
    'after=1.0', 'after=99999999999999999999', 'topic=%FF%FE', 'topic=a%C3');
case('header too large',
    "GET /stats HTTP/1.1\r\nHost: x\r\nX-Big: " . ('h' x 40000) . "\r\n\r\n", '4xx');
# MHD 0.9.75 closes on a request line it cannot parse, without an answer
case('garbage request line', "HELLO\r\n\r\n", 'closed');
case('HTTP/1.1 without Host', "GET /stats HTTP/1.1\r\nConnection: close\r\n\r\n", '4xx');
case('bad header line', "GET /stats HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", '4xx');

# 10. injection strings: accepted, and stored byte for byte
my @inject = (
    q{'; DROP TABLE aggr.events; --}, q{" OR "1"="1}, q{$1}, q{%s%s%n%x},
    q{\\}, q{\\\\'}, q{<script>alert(1)</script>}, q{${jndi:ldap://x}},
    qq{line1\nline2\r\ttab}, "\x{1F600} emoji", "\x{202E}rtl", "zero\x{200B}width",
    q{SELECT pg_sleep(10)}, q{); DELETE FROM aggr.counters; --}, q{\u0041},
    q{E'\\x00'}, q{`rm -rf /`}, q{{"nested":"json"}}, q{[1,2]}, q{null}
);
my $i = 0;
for my $s (@inject)
{
    my $e = event(topic => 'inject', event_id => "inj-$i", source => $s,
        payload => { s => $s, $s => 1 });
    case("injection $i", post(JSON::PP->new->canonical->utf8->encode($e)), 200);
    $i++;
}
my $e_inj = event(topic => 'inject', event_id => $inject[0]);
case('injection as event_id', post(JSON::PP->new->utf8->encode($e_inj)), 200);

cmp_ok(scalar @corpus, '>=', 200, 'corpus has at least 200 requests');

sub run_corpus
{
    my ($pass) = @_;
    my ($bad, $n) = (0, 0);
    for my $c (@corpus)
    {
        my ($name, $bytes, $want) = @$c;
        my $r = raw($port, $bytes, timeout => 20);
        my $got = $r->{status};
        my $right =
            $want eq '4xx'    ? ($got >= 400 && $got < 500)
          : $want eq 'closed' ? ($got == 0 || ($got >= 400 && $got < 500))
          :                     $got == $want;
        if (!$right)
        {
            $bad++;
            diag "pass $pass: $name: got $got, want $want: "
              . substr($r->{body} // '', 0, 300);
        }
        if ($got >= 400 && $want =~ /^\d+$/ && $name !~ /^HEAD/ && !defined json($r))
        {
            $bad++;
            diag "pass $pass: $name: error body is not JSON: "
              . substr($r->{body} // '', 0, 200);
        }
        if (++$n % 50 == 0)
        {
            my $h = http($port, 'GET', '/healthz');
            $bad++, diag "pass $pass: healthz $h->{status} after $n"
              unless $h->{status} == 200;
        }
    }
    return $bad;
}

my %before = (
    rows => $node->safe_psql('postgres', 'SELECT count(*) FROM aggr.events'));
is(run_corpus(1), 0, 'pass 1: every request got its status, JSON errors');
my $rss1 = rss_kb($sc->{pid});
is(run_corpus(2), 0, 'pass 2: the same again');
my $rss2 = rss_kb($sc->{pid});
is(run_corpus(3), 0, 'pass 3: the same again');
my $rss3 = rss_kb($sc->{pid});
note "RSS after passes: $rss1 kB, $rss2 kB, $rss3 kB";
cmp_ok($rss3 - $rss1, '<', 2048, "memory flat over passes ($rss1 -> $rss3 kB)");
ok(kill(0, $sc->{pid}), 'sidecar still running');

# nothing half-applied: only the accepted requests stored rows
is($node->safe_psql('postgres',
        "SELECT count(*) FROM aggr.events WHERE topic <> 'inject'"),
    0, 'no row from any rejected request');
my $stored = $node->safe_psql('postgres',
    "SELECT string_agg(encode(convert_to(source, 'UTF8'), 'hex'), ',' ORDER BY seq)"
      . " FROM aggr.events WHERE topic = 'inject' AND event_id LIKE 'inj-%'");
my $expected = join(',', map { unpack('H*', Encode::encode('UTF-8', $_)) } @inject);
is($stored, $expected, 'injection strings stored byte for byte');
is($node->safe_psql('postgres',
        "SELECT count(*) FROM aggr.events WHERE event_id = \$\$$inject[0]\$\$"),
    1, 'injection as event_id stored as is');
my $ev = json(http($port, 'GET', '/events?topic=inject&limit=100'));
is_deeply([ map { $_->{payload}{s} } grep { $_->{event_id} =~ /^inj-/ } @$ev ],
    \@inject, 'injection strings come back unchanged through /events');
is($node->safe_psql('postgres', q{
    SELECT sum(received) = sum(unique_processed) + sum(duplicate_dropped)
       AND sum(unique_processed) = (SELECT count(*) FROM aggr.events)
      FROM aggr.counters}), 't', 'counters match the rows');

# open $n connections and send each the first bytes of a request
sub open_conns_to
{
    my ($to, $n, $bytes) = @_;
    my @socks;
    for (1 .. $n)
    {
        my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $to)
          or last;
        print $s $bytes;
        push @socks, $s;
    }
    return @socks;
}

sub open_conns { return open_conns_to($port, @_) }

# slow clients hold connections, not threads: /healthz still answers at once
my @slow = (open_conns(8, "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n["),
    open_conns(8, "GET /stats HTTP/1.1\r\nHost: x\r\nX-Slow: "));
my $t0 = Time::HiRes::time();
is(http($port, 'GET', '/healthz')->{status}, 200, 'healthz with slow clients');
cmp_ok(Time::HiRes::time() - $t0, '<', 1, 'healthz not delayed by slow clients');
close $_ for @slow;

# 64 open connections (idle keep-alive and half-sent): RSS at most 16 MB
my @open = (open_conns(32, "GET /stats HTTP/1.1\r\nHost: x\r\n\r\n"),
    open_conns(32, "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n"
          . ('[' x 20000)));
is(scalar @open, 64, '64 connections open');
is(http($port, 'GET', '/healthz')->{status}, 200, 'healthz with 64 connections open');
my $rss = rss_kb($sc->{pid});
note "RSS with 64 open connections: $rss kB";
cmp_ok($rss, '<=', 16 * 1024, "RSS with 64 open connections <= 16 MB ($rss kB)");
close $_ for @open;

is(stop_sidecar($sc), 0, 'SIGTERM: exit 0');

# --max-buffered: bodies held at once over all clients are bounded
my $tight = start_sidecar($node, args => [ '--max-body=64K', '--max-buffered=100K' ]);
my @held = open_conns_to($tight->{port}, 1,
    "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n[");
my $r = http($tight->{port}, 'POST', '/publish', body => 'x' x 60000);
is($r->{status}, 503, '--max-buffered reached: 503');
ok(defined $r->{headers}{'retry-after'}, '--max-buffered reached: Retry-After');
close $_ for @held;
ok( AggrTest::wait_for(
        sub {
            http($tight->{port}, 'POST', '/publish', body => '[]')->{status} == 400;
        },
        10),
    'the budget comes back when the held body goes');
is(stop_sidecar($tight), 0, 'tight sidecar exits 0');

done_testing();
