# 041_sidecar_hostile.pl: a generated corpus of malformed and hostile
# requests against the real aggr-sidecar, one sidecar without and one with
# --token, run three times with slow and stalled clients overlapping the rest.
# Each request gets its exact status: a 4xx, a hang-up, or a 2xx for events
# that are valid but weird (injection strings, extreme numbers, deep
# payloads), which must then be stored byte for byte.  After the passes: the
# sidecars are up, no 5xx (but for the known bugs kept as TODO tests), the
# stored rows are exactly the accepted events and the counters match them,
# memory is flat from pass 2 to pass 3, and 64 open connections cost at most
# 16 MB of RSS.

use strict;
use warnings;

use FindBin;
use lib $FindBin::RealBin;

use Encode ();
use IO::Socket::INET;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use SidecarTest qw(new_node start_sidecar stop_sidecar http raw converse trickle
  json rss_kb wait_healthz check_invariants);
use Test::More;
use Time::HiRes ();

my $J        = JSON::PP->new->canonical->utf8;
my $MAX_BODY = 2 * 1024 * 1024;
my $TIMEOUT  = 3;                  # --timeout: a client that stops sending
my $TOKEN    = 's3cr3t-T0ken';
my $MiB      = 1024 * 1024;

my $node = new_node('hostile', 'aggr.max_request_events' => 100);
my @args = ("--max-body=$MAX_BODY", "--timeout=$TIMEOUT");

# One database connection for the big corpus: libpq keeps each connection's
# buffers as large as the largest body and answer it has carried, so with
# two, RSS would depend on which one happened to get the biggest so far.
my $sc  = start_sidecar($node, args => [ @args, '--threads=1' ]);
my $tsc = start_sidecar($node, args => [ @args, '--threads=2', "--token=$TOKEN" ]);
my ($port, $tport) = ($sc->{port}, $tsc->{port});
is(wait_healthz($port,  200, 30)->{status}, 200, 'sidecar up');
is(wait_healthz($tport, 200, 30)->{status}, 200, 'sidecar with --token up');

# ---- building requests ----

my $ids = 0;

# an event; each gets an event_id of its own unless one is given
sub event
{
    return {
        topic     => 'hostile',
        event_id  => 'h-' . ++$ids,
        timestamp => '2025-10-24T00:00:00Z',
        source    => 'tap',
        payload   => { k => 'v' },
        @_
    };
}

sub ev { return $J->encode(event(@_)) }

# an event whose field $f is the raw JSON text $v
sub with_raw
{
    my ($f, $v, @rest) = @_;
    (my $t = ev($f => 'PLACEHOLDER', @rest)) =~ s/"PLACEHOLDER"/$v/;
    return $t;
}

# an event whose string field $f has the raw bytes $b inside its quotes
sub with_bytes
{
    my ($f, $b) = @_;
    (my $t = ev($f => 'PLACE_HOLDER')) =~ s/PLACE_HOLDER/a${b}b/;
    return $t;
}

sub head { return "$_[0] HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n" }

# a POST /publish with a correct Content-Length
sub post
{
    my ($body, @headers) = @_;
    return head('POST /publish')
      . join('', map { "$_\r\n" } @headers)
      . 'Content-Length: ' . length($body) . "\r\n\r\n" . $body;
}

sub get { return head("GET $_[0]") . "\r\n" }

sub chunks { return join('', map { sprintf("%x\r\n%s\r\n", length $_, $_) } @_) }

sub chunked
{
    return head('POST /publish') . "Transfer-Encoding: chunked\r\n\r\n"
      . chunks(@_) . "0\r\n\r\n";
}

# the corpus: { cat, name, port, req (bytes, or [[delay, bytes], ...]),
# want, stores, mhd, error, todo }.  want is a status, 'closed' (hang-up at
# once, no answer) or 'timeout' (no answer; hang-up after --timeout).
# stores: the event texts a 2xx must have stored.  mhd: the answer is
# libmicrohttpd's own page, not aggr's JSON.  error: a pattern the error
# must match.  todo: a known bug, not fixed yet: a TODO test, so that it
# stays in sight and shows when it is fixed.
my (@corpus, $cat);

sub case
{
    my ($name, $req, $want, %o) = @_;
    push @corpus, { cat => $cat, name => $name, req => $req, want => $want,
        port => $port, %o };
}

# a valid request, made only of the events $texts: 200, and stored
sub accepted
{
    my ($name, $req, $texts, %o) = @_;
    case($name, $req, 200, stores => $texts, %o);
}

sub accept_event
{
    my ($name, $text, @headers) = @_;
    accepted($name, post($text, @headers), [$text]);
}

# ---- 1. truncated JSON ----
$cat = 'truncated JSON';
my @two = (ev(payload => { k => [ 1, "\x{e9}", { d => 'x' } ] }), ev());
my $valid = '[' . join(',', @two) . ']';
for (my $n = 0; $n < length $valid; $n += 2)
{
    case("cut at $n", post(substr($valid, 0, $n)), 400);
}
(my $esc = ev(source => 'PH')) =~ s/PH/\\u00e9/;
case('cut inside \u escape', post(substr($esc, 0, index($esc, '\\u00') + 4)), 400);
case('cut after a backslash', post(substr($esc, 0, index($esc, '\\u00') + 1)), 400);
my $mb = ev(source => "\x{e9}\x{20ac}");
case('cut inside a UTF-8 character',
    post(substr($mb, 0, index($mb, "\xE2\x82\xAC") + 2) . '"}'), 400);
case('chunked, cut', chunked(substr($two[1], 0, 30)), 400);

# ---- 2. not a request ----
$cat = 'not a request';
case("top-level $_", post($_), 400)
  for ('1', '"str"', 'null', 'true', 'false', '[]', '  ', '{', '}', ']',
    '[1,]', '{"topic":}', "{'topic':'x'}", 'NaN', '0x10', '{"a":1}{"b":2}',
    "\xEF\xBB\xBF{}", '[,]', '{"a" 1}', '/* c */ {}', '[' . ev() . ']x');
case("array of non-objects $_", post($_), 422, error => qr/event 0/)
  for ('[1]', '["x"]', '[null]', '[[]]', '[{}, 1]');

# ---- 3. deep nesting (10,000 levels and beyond) ----
$cat = 'deep nesting';
my $deep_obj = ('{"a":' x 10_000) . '1' . ('}' x 10_000);
my $deep_arr = ('[' x 10_000) . (']' x 10_000);
case('array nesting 10000', post($deep_arr), 422, error => qr/event 0/);
case('object nesting 10000', post($deep_obj), 422, error => qr/event 0: topic/);
case('array of objects nesting 10000',
    post(('[{"a":' x 5000) . '1' . ('}]' x 5000)), 422);
case("$_ = 10000 levels", post(with_raw($_, $deep_arr)), 422,
    error => qr/event 0: $_/)
  for qw(topic event_id source timestamp);
case('payload = 10000 nested arrays', post(with_raw(payload => $deep_arr)), 422,
    error => qr/event 0: payload/);
for my $t (with_raw(payload => $deep_obj),
    with_raw(payload => '{"a":' . $deep_arr . '}'))
{
    accept_event('payload nested 10000 deep (' . length($t) . ' bytes)', $t);
}
case('unclosed nesting 10000', post('[' x 10_000), 400);
case('10000 levels, cut', post(substr($deep_obj, 0, 55_000)), 400);
for my $d (20_000, 100_000)
{
    case("array nesting $d", post(('[' x $d) . (']' x $d)), 400);
    case("object nesting $d", post(('{"a":' x $d) . '1' . ('}' x $d)), 400);
    case("payload nesting $d",
        post(with_raw(payload => ('{"a":' x $d) . '1' . ('}' x $d))), 400);
}
case('unclosed nesting 200000', post('[' x 200_000), 400);

# ---- 4. invalid UTF-8: body, path, query, headers ----
$cat = 'invalid UTF-8';
my @bad_utf8 = ("\xFF", "\xC0\xAF", "\xED\xA0\x80", "\xE2\x82", "\xF8\x88\x80\x80\x80",
    "\x80", "a\xC3", "\xF4\x90\x80\x80");
for my $i (0 .. $#bad_utf8)
{
    my $b = $bad_utf8[$i];
    case("bad UTF-8 $i in $_", post(with_bytes($_, $b)), 400)
      for qw(topic event_id source timestamp);
    (my $key = ev()) =~ s/"k"/"k$b"/;
    case("bad UTF-8 $i in a payload key", post($key), 400);
    (my $top = ev()) =~ s/"source"/"sou${b}rce"/;
    case("bad UTF-8 $i in a top-level key", post($top), 400);
    case("bad UTF-8 $i in /events?topic=", get("/events?topic=x$b"), 400);
    case("bad UTF-8 $i in a route", get("/stats$b"), 404);
    accept_event("bad UTF-8 $i in a header value", ev(), "X-Junk: $b");
}
accept_event('bad UTF-8 in a header name', ev(), "X-\xFF\xFE: 1");
case("percent-encoded bad UTF-8 $_ in /events?topic=", get("/events?topic=$_"), 400)
  for ('%FF%FE', 'a%C3', '%C0%AF', '%ED%A0%80', '%F4%90%80%80');

# ---- 5. \u0000, surrogates, NUL and control bytes ----
$cat = '\u0000 and control bytes';
for my $f (qw(topic event_id source))
{
    case("\\u0000 in $f", post(with_bytes($f, '\\u0000')), 400);
    case("lone surrogate in $f", post(with_raw($f, '"\\ud800"')), 400);
    case("lone low surrogate in $f", post(with_raw($f, '"x\\udc00"')), 400);
    case("raw NUL in $f", post(with_bytes($f, "\x00")), 400);
    case("raw control byte in $f", post(with_bytes($f, "\x01")), 400);
    case("raw newline in $f", post(with_bytes($f, "\n")), 400);
}
case('\u0000 in a payload value', post(with_raw(payload => '{"k":"\\u0000"}')), 400);
case('\u0000 in a payload key', post(with_raw(payload => '{"\\u0000":1}')), 400);
case('\u0000 deep in the payload',
    post(with_raw(payload => '{"a":[{"b":["x\\u0000"]}]}')), 400);
case('\u0000 in event 1 of 2', post('[' . ev() . ',' . with_bytes(source => '\\u0000') . ']'),
    400);
case('NUL after valid JSON', post(ev() . "\x00"), 400);
case('NUL before valid JSON', post("\x00" . ev()), 400);
for my $s ('\\ud83d\\ude00', '\\u0001\\u001f', '\\u00e9\\u20ac', '\\\\u0000', '\\/')
{
    accept_event("escape $s in source", with_raw(source => "\"$s\""));
}

# ---- 6. numbers where strings are required, and extreme numbers ----
$cat = 'numbers';
for my $f (qw(topic event_id source))
{
    case("$f = $_", post(with_raw($f, $_)), 422, error => qr/event 0: $f/)
      for ('1e400', '-1e400', '1e-400', '-0', '1E+2',
        '123456789012345678901234567890', '0.0');
    case("$f = $_", post(with_raw($f, $_)), 400)
      for ('1e1000000', '-1e-20000');
}
case("event_id = $_ (not JSON)", post(with_raw(event_id => $_)), 400)
  for ('NaN', 'Infinity', '-Infinity', '+1', '01', '.5', '1.', '0x1F', '1e', '--1');
case("timestamp = $_", post(with_raw(timestamp => $_)), 422,
    error => qr/event 0: timestamp/)
  for ('1e400', '-1e400', '1e308', '1e20', '9e15', '-1e12', '"NaN"', '"infinity"',
    '"-infinity"', '"epoch"', '"now"', '"today"', '"allballs"', '"2025-02-30T00:00:00Z"',
    '"2025-01-01T00:00:00+99:00"', '"10000-01-01T00:00:00Z"', '"5000-01-01 BC"',
    '"J2451187"');
case("timestamp = $_", post(with_raw(timestamp => $_)), 400)
  for ('1e1000000', '1e-20000');
accept_event("timestamp = $_", with_raw(timestamp => $_)) for ('0.5', '-0', '1e-400', '0');
accept_event("payload number $_", with_raw(payload => "{\"n\":$_}"))
  for ('1e400', '-1e400', '1e-400', '1e131071', '-0.000000000000000000001');
case("payload number $_", post(with_raw(payload => "{\"n\":$_}")), 400)
  for ('1e1000000', '1e-16384', '-1e-20000');

# ---- 7. wrong types for each field ----
$cat = 'wrong types';
for my $f (qw(topic event_id source))
{
    case("$f = $_", post(with_raw($f, $_)), 422, error => qr/event 0: $f/)
      for ('1', '0', '-1', '1.5', '1e308', 'true', 'false', 'null', '[]', '{}',
        '""', '["x"]', '{"s":"x"}');
    my $e = event();
    delete $e->{$f};
    case("missing $f", post($J->encode($e)), 422, error => qr/event 0: $f/);
}
case("timestamp = $_", post(with_raw(timestamp => $_)), 422,
    error => qr/event 0: timestamp/)
  for ('"not-a-date"', '"2025-13-45T99:00:00Z"', 'true', '[]', '{}', '""', '1e300',
    'null', '["2025-10-24T00:00:00Z"]');
my $no_ts = event();
delete $no_ts->{timestamp};
case('missing timestamp', post($J->encode($no_ts)), 422, error => qr/timestamp/);
case("payload = $_", post(with_raw(payload => $_)), 422, error => qr/event 0: payload/)
  for ('[]', '"s"', '1', 'true', '[{}]');
my $no_payload = event();
delete $no_payload->{payload};
accept_event('no payload', $J->encode($no_payload));
accept_event('payload null', with_raw(payload => 'null'));
accept_event('extra fields', ev(extra => [ 1, { x => undef } ], id => 7));
accept_event('topic given twice', with_raw(payload => '{}') =~ s/^\{/{"topic":"first",/r);
for my $i (0, 1, 4)
{
    for my $f (qw(topic event_id source timestamp payload))
    {
        my @batch = map { ev() } 0 .. 4;
        $batch[$i] = with_raw($f, '[7]');
        case("batch of 5, $f wrong at $i", post('[' . join(',', @batch) . ']'), 422,
            error => qr/event $i: $f/);
    }
}
my @hundred = map { ev(topic => 'hundred') } 1 .. 100;
accepted('exactly 100 events', post('[' . join(',', @hundred) . ']'), \@hundred);
case('101 events', post('[' . join(',', map { ev() } 0 .. 100) . ']'), 413);

# ---- 8. huge strings ----
$cat = 'huge strings';
for my $len (129, 1000, 100_000, 900_000, $MiB)
{
    case("$_ of $len", post(ev($_ => 'x' x $len)), 422, error => qr/event 0: $_/)
      for qw(topic event_id source);
}
for my $f (qw(topic event_id source))
{
    accept_event("$f of 128", ev($f => 'y' x 128));
    accept_event("$f of 128 emoji", ev($f => "\x{1F600}" x 128));
    case("$f of 129 emoji", post(ev($f => "\x{1F600}" x 129)), 422);
}
accept_event('payload string of 1 MiB', ev(payload => { big => 'z' x $MiB }));
accept_event('payload key of 64 KiB', ev(payload => { ('k' x 65536) => 1 }));
case('body of --max-body bytes, not JSON', post('x' x $MAX_BODY), 400);
case('body one byte over --max-body', post('[' . ('x' x ($MAX_BODY - 1)) . ']'), 413);
case('Content-Length over --max-body, no body',
    head('POST /publish') . "Content-Length: 99999999999\r\n\r\n", 413);

# ---- 9. headers: huge, many, odd ----
$cat = 'headers';
accept_event('a 31 KiB header', ev(), 'X-Big: ' . ('h' x 31_000));
case('a 33 KiB header', post(ev(), 'X-Big: ' . ('h' x 33_000)), 431, mhd => 1);
case('a 1 MiB header', post(ev(), 'X-Big: ' . ('h' x $MiB)), 431, mhd => 1);
case('a 40 KiB header name', post(ev(), ('N' x 40_000) . ': 1'), 431, mhd => 1);
case('a 40 KiB header on GET', get('/stats') =~ s/\r\n\r\n$/\r\nX-Big: ${\('g' x 40_000)}\r\n\r\n/r,
    431, mhd => 1);
accept_event('100 headers', ev(), map { "X-H$_: v" } 1 .. 100);
case("$_ headers", post(ev(), map { "X-H$_: v" } 1 .. $_), 431, mhd => 1)
  for (1000, 5000);
accept_event('NUL in a header value', ev(), "X-Foo: a\x00b");
accept_event('control byte in a header value', ev(), "X-Foo: a\x01b");
accept_event('bare CR in a header value', ev(), "X-Foo: a\rb");
accept_event('space before the colon', ev(), 'X-Foo : 1');
accept_event('folded header', ev(), 'X-Foo: 1', ' folded');
my $lf = ev();
accepted('lines ended by LF alone',
    "POST /publish HTTP/1.1\nHost: x\nConnection: close\nContent-Length: "
      . length($lf) . "\n\n$lf", [$lf]);
case('empty header name', post(ev(), ': 1'), 400);
accept_event("Content-Type: $_", ev(), "Content-Type: $_")
  for ('text/plain', "\xFF/\xFF; charset=ebcdic", 'application/x-www-form-urlencoded',
    'multipart/form-data; boundary=x');
case('form-encoded body', post('a=1&b=2', 'Content-Type: application/x-www-form-urlencoded'),
    400);
accept_event('Expect: 100-continue', ev(), 'Expect: 100-continue');
accept_event('Expect: 999-junk', ev(), 'Expect: 999-junk');
accept_event('two Host headers', ev(), 'Host: other');
case('HTTP/1.1 without Host', "GET /stats HTTP/1.1\r\nConnection: close\r\n\r\n", 400,
    mhd => 1);
case('header line without a colon', get('/stats') =~ s/\r\n\r\n$/\r\nno colon here\r\n\r\n/r,
    400, mhd => 1);

# ---- 10. Content-Length: duplicated, lying, malformed ----
$cat = 'Content-Length';
my $ok = ev();
case('two Content-Length, same', head('POST /publish') . 'Content-Length: ' . length($ok)
      . "\r\nContent-Length: " . length($ok) . "\r\n\r\n$ok", 400);
case('two Content-Length, different', head('POST /publish')
      . "Content-Length: 5\r\nContent-Length: " . length($ok) . "\r\n\r\n$ok", 400);
case('Content-Length and chunked', head('POST /publish')
      . "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n[1,2]\r\n0\r\n\r\n", 400);
case("Content-Length 2^63", head('POST /publish')
      . "Content-Length: 9223372036854775808\r\n\r\n[]", 400);
# libmicrohttpd answers these itself (and sends its header block twice)
case("Content-Length '$_'", head('POST /publish') . "Content-Length: $_\r\n\r\n[1,2]",
    400, mhd => 1)
  for ('abc', '-1', '1.5', '0x10', '', '+5', ' 5 ', '5, 5');
case('Content-Length 2^64', head('POST /publish')
      . "Content-Length: 18446744073709551616\r\n\r\n[1,2]", 413, mhd => 1);
case('Content-Length 00005', head('POST /publish') . "Content-Length: 00005\r\n\r\n[1,2]",
    422);
case('Content-Length shorter than the body',
    head('POST /publish') . "Content-Length: 10\r\n\r\n" . ev(), 400);
case('Content-Length shorter, keep-alive, the rest smuggled',
    "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n" . ev()
      . get('/stats'), 400);
case('Content-Length 0 with a body', head('POST /publish') . "Content-Length: 0\r\n\r\n" . ev(),
    400);
case('no Content-Length, no chunked', head('POST /publish') . "\r\n" . ev(), 400);
case('HTTP/1.0 without Content-Length', "POST /publish HTTP/1.0\r\n\r\n" . ev(), 400);
my $h10 = ev();
accepted('HTTP/1.0 with Content-Length',
    "POST /publish HTTP/1.0\r\nContent-Length: " . length($h10) . "\r\n\r\n$h10", [$h10]);
case('Content-Length one longer than the body',
    head('POST /publish') . 'Content-Length: ' . (length($ok) + 1) . "\r\n\r\n$ok", 'timeout');
case('Content-Length 1 MB, short body',
    head('POST /publish') . "Content-Length: 1000000\r\n\r\n" . ev(), 'timeout');
case('GET with a Content-Length longer than its body',
    get('/stats') =~ s/\r\n\r\n$/\r\nContent-Length: 10\r\n\r\nab/r, 'timeout');
case('DELETE with a Content-Length longer than its body',
    head('DELETE /publish') . "Content-Length: 10\r\n\r\nab", 405);
case('GET with a body', get('/stats') =~ s/\r\n\r\n$/\r\nContent-Length: 2\r\n\r\nab/r, 200);

# ---- 11. slow clients: trickled headers and bodies ----
$cat = 'slow';

my $slow1 = ev();
accepted('body in 8 pieces over 3.5 s (longer than --timeout)',
    trickle(post($slow1), 8, 0.5), [$slow1]);
my $slow2 = ev();
accepted('request byte by byte', trickle(post($slow2), length(post($slow2)), 0.01), [$slow2]);
my $slow3 = ev();
accepted('chunks 0.5 s apart',
    [ [ 0, head('POST /publish') . "Transfer-Encoding: chunked\r\n\r\n" ],
      (map { [ 0.5, chunks($_) ] } unpack('(a40)*', $slow3)), [ 0.5, "0\r\n\r\n" ] ],
    [$slow3]);
case('malformed body, trickled', trickle(post('{"topic": "x", ' x 20), 5, 0.4), 400);
case('body stalls half way', [ [ 0, substr(post(ev()), 0, -40) ] ], 'timeout');
case('chunked body stalls', [ [ 0, head('POST /publish')
      . "Transfer-Encoding: chunked\r\n\r\n" . chunks('[{"a":') ] ], 'timeout');
case('headers stall', [ [ 0, head('POST /publish') . 'X-Slow: ' ] ], 'timeout');
case('chunked body over --max-body, slowly',
    [ [ 0, head('POST /publish') . "Transfer-Encoding: chunked\r\n\r\n" ],
      map({ [ 0.3, chunks('y' x $MiB) ] } 1 .. 3), [ 0.3, "0\r\n\r\n" ] ], 413);
case('a chunk announced over --max-body, never sent',
    [ [ 0, head('POST /publish') . "Transfer-Encoding: chunked\r\n\r\n"
          . sprintf("%x\r\n", 3 * $MiB) . 'yyy' ] ], 'timeout');
case('GET /stats byte by byte', trickle(get('/stats'), length(get('/stats')), 0.02), 200);
case('slow headers, no token', trickle(post(ev()), 6, 0.3), 401, port => $tport);

# ---- 12. chunked bodies ----
$cat = 'chunked';
my $TE = head('POST /publish') . "Transfer-Encoding: chunked\r\n\r\n";
my $c1 = ev();
accepted('chunked, valid', chunked(substr($c1, 0, 10), substr($c1, 10)), [$c1]);
my $c2 = ev();
accepted('chunked, 1-byte chunks', chunked(split //, $c2), [$c2]);
my %chunk_fmt = (
    'chunk extension'        => "%x;foo=bar\r\n%s\r\n0\r\n\r\n",
    'quoted chunk extension' => "%x;foo=\"b;a\\\"r\"\r\n%s\r\n0\r\n\r\n",
    'upper-case hex size'    => "%X\r\n%s\r\n0\r\n\r\n",
    'leading zeros in size'  => "000%x\r\n%s\r\n0\r\n\r\n",
    'trailer field'          => "%x\r\n%s\r\n0\r\nX-Trailer: 1\r\n\r\n",
    'extension on last chunk' => "%x\r\n%s\r\n0;x=y\r\n\r\n",);
for my $k (sort keys %chunk_fmt)
{
    my $e = ev();
    accepted("chunked, $k", $TE . sprintf($chunk_fmt{$k}, length $e, $e), [$e]);
}
for my $te ('CHUNKED', 'Chunked')
{
    my $e = ev();
    accepted("Transfer-Encoding: $te",
        head('POST /publish') . "Transfer-Encoding: $te\r\n\r\n" . chunks($e) . "0\r\n\r\n",
        [$e]);
}
my $c3 = ev();
accepted('Transfer-Encoding twice',
    head('POST /publish') . "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
      . chunks($c3) . "0\r\n\r\n", [$c3]);
my $c4 = ev();
accepted('chunked in HTTP/1.0',
    "POST /publish HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
      . chunks($c4) . "0\r\n\r\n", [$c4]);
case('chunked, malformed JSON', chunked('{"topic":', '"x"'), 400);
case('chunked, scalar', chunked('4', '2'), 400);
case('chunked, empty body', $TE . "0\r\n\r\n", 400);
case('chunked, NUL in the data', chunked("[1,\x00]"), 400);
case('chunked, a Content-Length trailer', $TE . "5\r\n[1,2]\r\n0\r\nContent-Length: 99\r\n\r\n",
    422);
case('chunked, 3000 empty extensions', $TE . '5' . (';a' x 3000) . "\r\n[1,2]\r\n0\r\n\r\n",
    422);
case('chunked, LF alone after sizes', $TE . "3\nabc\n0\n\n", 400);
case('chunked, schema violation',
    chunked(substr(with_raw(event_id => 7), 0, 10), substr(with_raw(event_id => 7), 10)),
    422, error => qr/event 0: event_id/);
case('chunked, over --max-body in many chunks', chunked(('y' x 65536) x 33), 413);
case('chunked, over --max-body in one chunk', chunked('y' x (3 * $MiB)), 413);
my %bad_size = ('zz' => 'abc', '-1' => 'abc', ' 3' => 'abc', '0x3' => 'abc',
    '2' => 'abc', '' => 'abc', '5 ' => '[1,2]', "5\t;x" => '[1,2]', '+5' => '[1,2]');
case("chunked, size line '$_'", $TE . "$_\r\n$bad_size{$_}\r\n0\r\n\r\n", 400, mhd => 1)
  for sort keys %bad_size;
case('chunked, no CRLF after the data', $TE . "3\r\nabc0\r\n\r\n", 400, mhd => 1);
case('chunked, trailer without a colon', $TE . "5\r\n[1,2]\r\n0\r\nno colon\r\n\r\n", 400,
    mhd => 1);
case('chunked, size of 18 hex digits', $TE . "ffffffffffffffffff\r\nabc\r\n0\r\n\r\n", 413,
    mhd => 1);
case("chunked, size $_, short data", $TE . "$_\r\nabc\r\n0\r\n\r\n", 'timeout')
  for ('ffffffffffffffff', '7fffffffffffffff');
case('chunked, no last chunk', $TE . "5\r\n[1,2]\r\n", 'timeout');
case("Transfer-Encoding: $_", head('POST /publish') . "Transfer-Encoding: $_\r\n\r\n"
      . chunks(ev()) . "0\r\n\r\n", 400)
  for ('gzip, chunked', 'chunked, chunked', 'junk', 'identity');
case('Transfer-Encoding: identity and Content-Length',
    head('POST /publish') . "Transfer-Encoding: identity\r\nContent-Length: "
      . length($ok) . "\r\n\r\n$ok", 400);
case('chunked, a 40 KiB extension', $TE . '5;' . ('a' x 40_000) . "\r\n[1,2]\r\n0\r\n\r\n",
    '4xx', mhd => 1,
    todo => 'libmicrohttpd 0.9.75 answers 500 when a chunk-size line overflows '
      . 'its connection memory');

# ---- 13. methods ----
$cat = 'methods';
case("$_ /publish", head("$_ /publish") . "\r\n", 405)
  for qw(GET PUT PATCH DELETE OPTIONS HEAD TRACE CONNECT PROPFIND post Post);
for my $route (qw(/stats /events /healthz /metrics))
{
    case("$_ $route", head("$_ $route") . "Content-Length: 2\r\n\r\n{}", 405)
      for qw(POST PUT DELETE);
}
case('a 200-byte method', head(('A' x 200) . ' /stats') . "\r\n", 405);
case('a control byte in the method', head("G\x01T /stats") . "\r\n", 405);
case('CONNECT host:port', head('CONNECT 127.0.0.1:80') . "\r\n", 404);
case('OPTIONS *', head('OPTIONS *') . "\r\n", 404);
case('HEAD /stats', head('HEAD /stats') . "\r\n", 200);

# ---- 14. absurd URLs and protocol lines ----
$cat = 'URLs and versions';
case("GET $_", get($_), 404)
  for ('/', '/publish/', '/Publish', '//publish', '/publish/..', '/events/1', '/stats.json',
    '/healthz/', '/metrics;x', '/' . ('a' x 2000), 'http://evil/stats', 'stats',
    '/../../etc/passwd', '/%2Fstats', '/events#x', '/%00');
# %00 is left undecoded (a NUL would cut the C strings short): an unknown
# path, an invalid number, a topic no event can have
case('GET /stats%00x', get('/stats%00x'), 404);
case("GET /events?$_", get("/events?$_"), 400) for ('limit=5%00', 'after=1%00x');
case('GET /events?topic=a%00b', get('/events?topic=a%00b'), 200);
case('GET /%73tats (decoded to /stats)', get('/%73tats'), 200);
case('GET /stats?x=1', get('/stats?x=1'), 200);
case('a 40 KiB URL', get('/' . ('a' x 40_000)), 414, mhd => 1);
case('/events?topic= of 200 KiB', get('/events?topic=' . ('a' x 200_000)), 414, mhd => 1);
my $q = ev();
accepted('POST /publish?x=1',
    head('POST /publish?x=1') . 'Content-Length: ' . length($q) . "\r\n\r\n$q", [$q]);
case('a space in the URL', head('GET /st ats') . "\r\n", 'closed');
case('garbage request line', "HELLO\r\n\r\n", 'closed');
case('HTTP/0.9 request line', "GET /stats\r\n\r\n", 400, mhd => 1);
case('lower-case http/1.1', head('GET /stats') =~ s{HTTP/1\.1}{http/1.1}r . "\r\n", 400,
    mhd => 1);
case("version $_", head('GET /stats') =~ s{HTTP/1\.1}{$_}r . "\r\n", 200)
  for ('HTTP/1.0', 'HTTP/1.2');
case("version $_", head('GET /stats') =~ s{HTTP/1\.1}{$_}r . "\r\n", '4xx', mhd => 1,
    todo => 'libmicrohttpd answers 505 to an HTTP version it does not speak')
  for ('HTTP/2.0', 'HTTP/9.9');
case('HTTP/2 preface', "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", '4xx', mhd => 1,
    todo => 'libmicrohttpd answers 505 to an HTTP version it does not speak');
case('empty request', '', 'timeout');
case('CRLF only', "\r\n\r\n", 'timeout');
case('request line unfinished', 'POST /publ', 'timeout');
case('CRLF before the request line', "\r\n\r\n" . get('/stats'), 200);

# ---- 15. /events query strings ----
$cat = '/events query';
case("GET /events?$_", get("/events?$_"), 400)
  for ('limit=abc', 'limit=-1', 'limit=0', 'limit=10001', 'limit=1e3', 'limit=1e9',
    'limit=1000000000', 'limit=99999999999999999999', 'limit=%20', 'limit=0x10',
    'limit=+5', 'limit=%205', 'limit=5%20', 'limit=', 'limit=-0x1', 'limit=1.0',
    'after=-5', 'after=x', 'after=abc', 'after=1.0', 'after=', 'after=99999999999999999999',
    'after=9223372036854775808', 'after=%2D1', 'limit=abc&limit=5', 'limit=5&after=x',
    'topic=%FF%FE&limit=1');
# the first of repeated parameters counts; a bare name is no parameter
case("GET /events?$_", get("/events?$_"), 200)
  for ('limit=5&limit=abc', 'limit=5&limit=6', 'limit', 'after', 'topic=a&topic=b',
    '&&&=&', '?limit=1', 'limit=05', 'after=0', 'limit=10000',
    'after=9223372036854775807', 'foo=bar', 'topic=%', 'topic=%2', 'topic=%ZZ',
    'topic=' . ('t' x 30_000), 'topic=%27%3B%20DROP%20TABLE%20aggr.events%3B--',
    'topic=a%0D%0ASet-Cookie:%20x=1', 'topic=a+b', 'limit=1&limit=1&limit=1');

# ---- 16. bearer token abuse (the sidecar started with --token) ----
$cat = 'bearer token';
my %wrong_auth = (
    'no Authorization'         => undef,
    'Bearer with a prefix'     => 'Bearer s3cr3t',
    'Bearer with one more'     => "Bearer ${TOKEN}X",
    'Bearer in upper case'     => 'Bearer ' . uc $TOKEN,
    'Basic'                    => 'Basic czNjcjN0LVQwa2Vu',
    'token without a scheme'   => $TOKEN,
    'Bearer alone'             => 'Bearer',
    'Bearer and a space'       => 'Bearer ',
    'empty Authorization'      => '',
    'trailing space'           => "Bearer $TOKEN ",
    'trailing tab'             => "Bearer $TOKEN\t",
    'a 20 KiB token'           => 'Bearer ' . ('A' x 20_000),
    'bad UTF-8 token'          => "Bearer \xFF\xFE",
    'NUL before the token'     => "Bearer \x00$TOKEN",
    'token folded onto a new line' => "Bearer\r\n $TOKEN",
    'Bearer:token'             => "Bearer:$TOKEN",);
for my $k (sort keys %wrong_auth)
{
    my @h = defined $wrong_auth{$k} ? ("Authorization: $wrong_auth{$k}") : ();
    case($k, post(ev(), @h), 401, port => $tport);
}
case('token in the query string', head("POST /publish?token=$TOKEN") . "Content-Length: 2\r\n\r\n[]",
    401, port => $tport);
case('token in X-Authorization', post(ev(), "X-Authorization: Bearer $TOKEN"), 401,
    port => $tport);
case('wrong token, then the right one',
    post(ev(), 'Authorization: Bearer nope', "Authorization: Bearer $TOKEN"), 401,
    port => $tport);
case('wrong token, huge Content-Length',
    head('POST /publish') . "Authorization: Bearer x\r\nContent-Length: 99999999\r\n\r\n", 401,
    port => $tport);
case('wrong token, chunked', head('POST /publish')
      . "Authorization: Bearer x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n[]\r\n0\r\n\r\n", 401,
    port => $tport);
case('right token, empty array', post('[]', "Authorization: Bearer $TOKEN"), 400,
    port => $tport);
case('right token, schema violation', post(with_raw(topic => 1), "Authorization: Bearer $TOKEN"),
    422, port => $tport);
for my $auth ("Bearer $TOKEN", "bearer $TOKEN", "BEARER $TOKEN", "Bearer    $TOKEN")
{
    my $e = ev();
    accepted("Authorization: $auth", post($e, "Authorization: $auth"), [$e], port => $tport);
}
my $tt = ev();
accepted('right token, then a wrong one',
    post($tt, "Authorization: Bearer $TOKEN", 'Authorization: Bearer nope'), [$tt],
    port => $tport);
case("no token: GET $_", get($_), 200, port => $tport) for ('/stats', '/events?limit=1');

# ---- 17. injection strings: accepted, stored byte for byte ----
$cat = 'injection';
my @inject = (
    q{'; DROP TABLE aggr.events; --}, q{" OR "1"="1}, q{' OR 1=1 --}, q{$1}, q{$$; SELECT 1; $$},
    q{%s%s%n%x}, q{\\}, q{\\\\'}, q{<script>alert(1)</script>}, q{${jndi:ldap://x}},
    qq{line1\nline2\r\ttab}, qq{crlf\r\nX-Injected: 1}, qq{\r\n\r\nHTTP/1.1 200 OK\r\n},
    "\x{1F600} emoji", "\x{202E}rtl", "zero\x{200B}width", "\x{FEFF}bom", "\x{10FFFF}max",
    "del\x{7F}", "ctl\x{1}\x{1F}", q{SELECT pg_sleep(10)}, q{); DELETE FROM aggr.counters; --},
    q{\u0041}, q{\u0000}, q{E'\\x00'}, q{`rm -rf /`}, q{$(reboot)}, q{| cat /etc/passwd},
    q{; kill -9 1}, q{../../etc/passwd}, q{{{7*7}}}, q{{"nested":"json"}},
    q<"},{"topic":"evil","event_id":"x">, q{[1,2]}, q{null}, q{%00}, q{%0d%0a}, q{*/ --}
);
my %inj_source;
for my $i (0 .. $#inject)
{
    my $s = $inject[$i];
    my $e = ev(topic => 'inject', event_id => "inj-$i", source => $s,
        payload => { s => $s, $s => 1 });
    accept_event("injection $i in source and payload", $e);
    $inj_source{"inj-$i"} = $s;
    accept_event("injection $i as event_id", ev(topic => 'inject-id', event_id => $s));
    accept_event("injection $i as topic", ev(topic => $s, event_id => "inj-topic-$i"));
}

# ---- the corpus as a whole ----

my (%distinct, %by_cat);
for my $c (@corpus)
{
    my $req = ref $c->{req} ? join("\0", map { "@$_" } @{ $c->{req} }) : $c->{req};
    $distinct{"$c->{port}\0$req"}++;
    $by_cat{ $c->{cat} }++;
}
cmp_ok(scalar @corpus, '>=', 500, 'the corpus has at least 500 requests');
is(scalar keys %distinct, scalar @corpus, 'every request of the corpus is distinct')
  or diag explain [ grep { $distinct{$_} > 1 } keys %distinct ];
note sprintf('corpus: %d requests, %s', scalar @corpus,
    join(', ', map { "$_ $by_cat{$_}" } sort keys %by_cat));

# slow and stalled clients first, so that they overlap the rest
my @order = sort {
    (($corpus[$b]{want} eq 'timeout' || ref $corpus[$b]{req}) ? 1 : 0)
      <=> (($corpus[$a]{want} eq 'timeout' || ref $corpus[$a]{req}) ? 1 : 0)
      or $a <=> $b
} 0 .. $#corpus;

# what is wrong with answer $r to case $c, or undef
sub verdict
{
    my ($c, $r) = @_;
    my ($want, $got) = ($c->{want}, $r->{status});
    my $idle = sprintf('%.1f', $r->{idle} // -1);
    if ($want eq 'timeout')
    {
        return "got $got, want no answer" if $got;
        return "hung up after ${idle}s, want about ${TIMEOUT}s"
          unless $r->{closed} && $idle > $TIMEOUT - 1 && $idle < $TIMEOUT + 3;
        return undef;
    }
    if ($want eq 'closed')
    {
        return "got $got ($idle s), want an immediate hang-up"
          if $got || !$r->{closed} || $idle > $TIMEOUT - 1;
        return undef;
    }
    if ($want eq '4xx')
    {
        return $got >= 400 && $got < 500 ? undef : "got $got, want a 4xx";
    }
    return "got $got" . ($r->{error} ? " ($r->{error})" : '') . ", want $want"
      . ': ' . substr($r->{body} // '', 0, 200)
      unless $got == $want;
    my $is_head = ref $c->{req} ? 0 : $c->{req} =~ /^HEAD /;
    if ($got >= 400 && !$c->{mhd} && !$is_head)
    {
        my $body = json($r);
        return 'error body is not JSON {"error": ...}: ' . substr($r->{body}, 0, 200)
          unless ref $body eq 'HASH' && defined $body->{error};
        return "error does not match $c->{error}: $body->{error}"
          if $c->{error} && $body->{error} !~ $c->{error};
    }
    return undef;
}

my %status_count;    # over all passes: status => count
sub run_corpus
{
    my ($pass) = @_;
    my $t0 = Time::HiRes::time();
    my $healthz_bad = 0;
    my @answers = converse(
        [ map { { port => $corpus[$_]{port},
                    (ref $corpus[$_]{req} ? 'send' : 'bytes') => $corpus[$_]{req} } }
              @order ],
        window     => 32,
        timeout    => $TIMEOUT + 5,
        tick_every => 0.5,
        tick       => sub {
            $healthz_bad++
              unless http($port, 'GET', '/healthz', timeout => 5)->{status} == 200;
        });
    my ($bad, $fivexx) = (0, 0);
    for my $k (0 .. $#order)
    {
        my ($c, $r) = ($corpus[ $order[$k] ], $answers[$k]);
        $status_count{ $r->{status} }++;
        my $why = verdict($c, $r);
        if ($c->{todo})
        {
          TODO:
            {
                local $TODO = $c->{todo};
                ok(!$why, "pass $pass: $c->{cat}: $c->{name}") or diag $why;
            }
            next;
        }
        $fivexx++ if $r->{status} >= 500;
        next unless $why;
        $bad++;
        diag "pass $pass: $c->{cat}: $c->{name}: $why";
    }
    note sprintf('pass %d: %.1f s', $pass, Time::HiRes::time() - $t0);
    is($bad, 0, "pass $pass: every request got its exact answer");
    is($fivexx, 0, "pass $pass: no 5xx");
    is($healthz_bad, 0, "pass $pass: /healthz answered 200 throughout");
}

run_corpus(1);
my @rss1 = (rss_kb($sc->{pid}), rss_kb($tsc->{pid}));
run_corpus(2);
my @rss2 = (rss_kb($sc->{pid}), rss_kb($tsc->{pid}));
run_corpus(3);
my @rss3 = (rss_kb($sc->{pid}), rss_kb($tsc->{pid}));
note "statuses over 3 passes: "
  . join(', ', map { "$_ x $status_count{$_}" } sort keys %status_count);
note "RSS after passes 1, 2, 3: sidecar $rss1[0] / $rss2[0] / $rss3[0] kB, "
  . "with --token $rss1[1] / $rss2[1] / $rss3[1] kB";
# flat: a few hundred kB of allocator noise, not a leak, where a body or an
# answer lost per request would show as megabytes
for my $i (0, 1)
{
    cmp_ok($rss3[$i] - $rss2[$i], '<=', 512,
        "memory flat from pass 2 to pass 3 ($rss2[$i] -> $rss3[$i] kB)");
}
ok(kill(0, $sc->{pid}) && kill(0, $tsc->{pid}), 'both sidecars still running');
is(http($_, 'GET', '/healthz')->{status}, 200, 'healthz 200 after the corpus')
  for ($port, $tport);

# ---- nothing half-applied: the rows are exactly the accepted events ----

my @want;    # [case number, position in the request, event text]
for my $k (0 .. $#corpus)
{
    my $texts = $corpus[$k]{stores} or next;
    push @want, map { "[$k,$_,$texts->[$_]]" } 0 .. $#$texts;
}
my $want_hex = unpack('H*', '[' . join(',', @want) . ']');
my $diff = $node->safe_psql('postgres', qq{
    CREATE TEMP TABLE want AS
      SELECT (w->>0)::int AS k, (w->>1)::int AS pos, w->2->>'topic' AS topic,
             w->2->>'event_id' AS event_id, w->2->>'source' AS source,
             coalesce(nullif(w->2->'payload', 'null'), '{}') AS payload
        FROM jsonb_array_elements(convert_from(decode('$want_hex', 'hex'), 'UTF8')::jsonb) w;
    SELECT (SELECT count(*) FROM want) || ' '
        || (SELECT count(*) FROM (SELECT topic, event_id FROM want
                                   GROUP BY 1, 2 HAVING count(DISTINCT k) > 1) s) || ' '
        || (SELECT count(*) FROM (SELECT topic, event_id, source, payload FROM want
                                  EXCEPT SELECT topic, event_id, source, payload
                                    FROM aggr.events) m) || ' '
        || (SELECT count(*) FROM (SELECT topic, event_id, source, payload FROM aggr.events
                                  EXCEPT SELECT topic, event_id, source, payload
                                    FROM want) u)});
my ($n_want, $shared, $missing, $unexpected) = split / /, $diff;
cmp_ok($n_want, '>', 0, "accepted events: $n_want");
is($shared, 0, 'no two accepted requests share a (topic, event_id)');
is($missing, 0, 'every accepted event is stored, byte for byte');
is($unexpected, 0, 'nothing else is stored: no rejected request left a row');
check_invariants($node, 'after 3 passes',
    received   => 3 * $n_want,
    unique     => $n_want,
    duplicates => 2 * $n_want);

# injection strings: byte for byte in SQL, and back through /events
# UTF-8 bytes as JSON::PP writes them (U+10FFFF included)
sub utf8_of { my ($s) = @_; utf8::encode($s); return $s }
sub hex_of  { return unpack('H*', utf8_of($_[0])) }

sub stored_hex
{
    my ($column, $where) = @_;
    return [ sort split /\n/, $node->safe_psql('postgres',
        "SELECT encode(convert_to($column, 'UTF8'), 'hex') FROM aggr.events WHERE $where") ];
}
my @inject_hex = sort map { hex_of($_) } @inject;
is_deeply(stored_hex('source', "topic = 'inject'"), \@inject_hex,
    'injection strings stored byte for byte as source');
is_deeply(stored_hex('event_id', "topic = 'inject-id'"), \@inject_hex,
    'injection strings stored byte for byte as event_id');
is_deeply(stored_hex('topic', "event_id LIKE 'inj-topic-%'"), \@inject_hex,
    'injection strings stored byte for byte as topic');
my $ev = json(http($port, 'GET', '/events?topic=inject&limit=100'));
is_deeply({ map { $_->{event_id} => $_->{payload}{s} } @$ev }, \%inj_source,
    'injection strings come back unchanged through /events');
my $back = json(http($port, 'GET', '/events?topic=inject-id&limit=100'));
is_deeply([ sort map { $_->{event_id} } @$back ], [ sort @inject ],
    'injection event_ids come back unchanged through /events');
for my $t (@inject)
{
    my $enc = utf8_of($t) =~ s/([^A-Za-z0-9._~-])/sprintf('%%%02X', ord $1)/ger;
    my $r = http($port, 'GET', "/events?topic=$enc&limit=1");
    my $got = json($r);
    my $ok = $r->{status} == 200 && ref $got eq 'ARRAY' && @$got == 1
      && $got->[0]{topic} eq $t && !exists $r->{headers}{'x-injected'}
      && ($r->{headers}{link} // '') =~ /^<\/events\?topic=[^\r\n>]*&limit=1&after=\d+>; rel="next"$/;
    ok($ok, 'injection as topic: found by ?topic=, Link header percent-encoded: '
          . hex_of(substr($t, 0, 16)))
      or diag explain $r->{headers};
}

# ---- slow clients and open connections ----

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

# 64 open connections (idle keep-alive and half-sent): RSS at most 16 MB.
# On a sidecar of its own, free of the libpq buffers grown above.
my $fresh = start_sidecar($node, args => [ @args, '--threads=2' ]);
is(wait_healthz($fresh->{port}, 200, 30)->{status}, 200, 'a fresh sidecar up');
my @open = map { open_conns_to($fresh->{port}, 32, $_) }
  ("GET /stats HTTP/1.1\r\nHost: x\r\n\r\n",
    "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Length: 50000\r\n\r\n" . ('[' x 20000));
is(scalar @open, 64, '64 connections open');
is(http($fresh->{port}, 'GET', '/healthz')->{status}, 200, 'healthz with 64 connections open');
my $rss = rss_kb($fresh->{pid});
note "RSS with 64 open connections: $rss kB";
cmp_ok($rss, '<=', 16 * 1024, "RSS with 64 open connections <= 16 MB ($rss kB)");
close $_ for @open;
is(stop_sidecar($fresh), 0, 'SIGTERM: the fresh sidecar exits 0');

is(stop_sidecar($sc),  0, 'SIGTERM: exit 0');
is(stop_sidecar($tsc), 0, 'SIGTERM: the sidecar with --token exits 0');

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
