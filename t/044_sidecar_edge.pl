# aggr-sidecar at the edge of what it may say and promise.
# - Secrets: a broker URL with a password, malformed or unreachable, never
#   shows its password in any answer, log line or SQL-visible value, and the
#   open routes (/healthz, a failed POST /publish) do not echo internal error
#   text (Redis host:port, libpq's socket paths) either: that goes to the log.
# - A 200 means committed: direct-mode publishes commit synchronously even
#   on a server and role with synchronous_commit = off, so a crash right after
#   the answer loses nothing.
# - A publish whose answer was lost (the database did not answer within
#   --db-timeout) is a 503 that says the outcome is unknown, and the
#   publisher's ledger records those events as unknown, not failed.
# - --read-token guards what reads events (/events, /stats); /healthz and
#   /metrics stay open; an empty token is refused at start, not taken as none.
# - A /healthz flood does not reach the database more than about once a
#   second, and publishes beside it keep succeeding.
# - A GET /events page is bounded in bytes as well as events (--max-page); the
#   Link header leads through the rest, nothing skipped or repeated.
# - Slow bodies cannot hold the --max-buffered budget: a body is counted as
#   it arrives, not as declared, and one slower than --min-body-rate after
#   --timeout seconds is dropped.
# - Shipper-ready: NDJSON bodies and gzip/deflate bodies (README's curl
#   commands, run as written), --max-body bounding the inflated size.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use lib 't';
use SidecarTest qw(new_node start_sidecar stop_sidecar http converse json wait_healthz check_invariants);
use Time::HiRes qw(time);
use AggrTest qw(spawn wait_for);

my $event = '{"topic":"edge","event_id":"%s","timestamp":0,"source":"s"}';

# --- secrets -------------------------------------------------------------
my $n = 0;
for my $url ('redis://:s3cret@127.0.0.1:1/0', 'rediss://user:s3cret@127.0.0.1:1/0')
{
    my $node = new_node('secret' . ++$n, 'aggr.broker_url' => $url, 'aggr.worker_count' => 1);
    my $sc   = start_sidecar($node);
    my $h    = wait_healthz($sc->{port}, 503, 30);
    is($h->{status}, 503, "$url: /healthz is 503 while the broker is down");
    like($h->{body}, qr/"down": \["broker"/, "$url: /healthz names the broker");
    unlike($h->{body}, qr/s3cret|127\.0\.0\.1:1\b|broker_error/, "$url: /healthz says no more than that");
    my $p = http($sc->{port}, 'POST', '/publish', body => sprintf($event, 'p'));
    is($p->{status}, 503, "$url: a publish is 503");
    is(json($p)->{sqlstate}, '08006', "$url: with SQLSTATE 08006");
    unlike($p->{body}, qr/s3cret|127\.0\.0\.1:1\b/, "$url: the publish answer has no password or address");
    my $sql = $node->safe_psql('postgres', 'SELECT aggr_health()::text || aggr_stats()::text');
    unlike($sql, qr/s3cret/, "$url: aggr_health() and aggr_stats() show no password");
    my ($ret, $out, $err) = $node->psql('postgres',
        sprintf(q{SELECT aggr_publish('%s')}, sprintf($event, 'q')));
    unlike($err, qr/s3cret/, "$url: the SQL error shows no password");
    ok(wait_for(sub { slurp_file($node->logfile) =~ /aggr consumer 1: lost the broker/ }, 30),
        "$url: the consumer logs the outage");
    stop_sidecar($sc);
    my $logs = slurp_file($node->logfile) . slurp_file($sc->{log});
    unlike($logs, qr/s3cret/, "$url: no log line holds the password");
    like(slurp_file($sc->{log}), qr/health: broker: /, "$url: the sidecar logs the broker's error");
    $node->stop;
}

# --- a 200 is durable, whatever synchronous_commit says ------------------
# With synchronous_commit off everywhere and the WAL writer asleep for 10 s, a
# commit is flushed only if the publish forced it: right after the answer the
# WAL must be flushed up to where it is written (autovacuum off: nothing else
# writes WAL meanwhile).
{
    my $node = new_node('durable', synchronous_commit => 'off', wal_writer_delay => '10s',
        autovacuum => 'off');
    $node->safe_psql('postgres', 'ALTER ROLE CURRENT_USER SET synchronous_commit = off');
    my $flushed = q{SELECT pg_current_wal_flush_lsn() >= pg_current_wal_insert_lsn()};
    my $sc = start_sidecar($node);
    wait_healthz($sc->{port});
    for my $i (1 .. 3)
    {
        my $p = http($sc->{port}, 'POST', '/publish', body => '[' . join(',', map { sprintf($event, "d$i-$_") } 1 .. 50) . ']');
        is($p->{status}, 200, "direct publish $i answered 200");
        is($node->safe_psql('postgres', $flushed), 't', "publish $i: its commit is on disk when the 200 is sent");
    }
    is($node->safe_psql('postgres',
        q{SET synchronous_commit = off;
          SELECT aggr_publish('{"topic":"edge","event_id":"sql","timestamp":0,"source":"s"}') IS NOT NULL;}
          . $flushed), "t\nt", 'the same for aggr_publish from SQL with synchronous_commit off');
    is($node->safe_psql('postgres', 'SHOW synchronous_commit'), 'off', 'the setting itself is left alone');
    # the contrast: an aggr_ingest (no acknowledgement of its own) follows the setting
    $node->safe_psql('postgres', q{SELECT aggr_ingest('{"topic":"edge","event_id":"ingest","timestamp":0,"source":"s"}')});
    is($node->safe_psql('postgres', $flushed), 'f', 'an aggr_ingest with synchronous_commit off is not flushed at once');
    check_invariants($node, 'durable', unique => 152);
    stop_sidecar($sc);
    $node->stop;
}

# --- a lost answer is an unknown outcome, and the ledger says so --------
{
    my $node = new_node('unknown');
    my $sc = start_sidecar($node, args => ['--db-timeout=1']);
    wait_healthz($sc->{port});
    # a session locks the counters, so every publish waits
    my $holder = $node->background_psql('postgres');
    $holder->query_safe('BEGIN; LOCK TABLE aggr.counters IN EXCLUSIVE MODE');
    my $p = http($sc->{port}, 'POST', '/publish', body => sprintf($event, 'u1'), timeout => 10);
    is($p->{status}, 503, 'a publish the database did not answer in time: 503');
    is(json($p)->{outcome}, 'unknown', 'the answer says the outcome is unknown');
    like(json($p)->{error}, qr/retry is safe/, 'and that a retry is safe');
    $p = http($sc->{port}, 'POST', '/publish', body => sprintf($event, 'u2') . "\n",
        headers => { 'Content-Type' => 'application/x-ndjson' }, timeout => 10);
    is(json($p)->{outcome}, 'unknown', 'an NDJSON publish too');

    # the same through aggr-publisher: its ledger records unknown, not failed
    my $ledger = $node->basedir . '/ledger';
    my $pub = $ENV{AGGR_PUBLISHER} // 'publisher/aggr-publisher';
    my $rc = system("$pub --url http://127.0.0.1:$sc->{port} --events 10 --dup-ratio 0 --batch 10"
          . " --topics 1 --max-retry-time 3 --timeout 10 --quiet --ledger $ledger"
          . " >> $sc->{log} 2>&1");
    isnt($rc, 0, 'aggr-publisher fails while every attempt times out');
    my @outcomes = map { (split /\t/)[2] } split /\n/, slurp_file($ledger);
    is(scalar(@outcomes), 10, 'the ledger has every event');
    is(scalar(grep { $_ eq 'unknown' } @outcomes), 10, 'each recorded as unknown');
    $holder->query_safe('COMMIT');
    $holder->quit;
    # the statements the sidecar gave up on did commit: that is why unknown
    ok($node->poll_query_until('postgres',
        q{SELECT count(*) = 1 FROM aggr.events WHERE event_id = 'u1'}),
        'the publish the sidecar gave up on was applied after all');
    ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM aggr.events WHERE event_id = 'u2'}),
        'and so was the NDJSON one');
    check_invariants($node, 'after the timeouts');
    stop_sidecar($sc);
    $node->stop;
}

# --- the read token ----------------------------------------------------
{
    my $node = new_node('tokens');
    my $sc = start_sidecar($node, args => [ '--token=w7ite', '--read-token=r3ad' ]);
    wait_healthz($sc->{port});
    my %auth = (none => {}, publish => { Authorization => 'Bearer w7ite' },
        read => { Authorization => 'Bearer r3ad' }, wrong => { Authorization => 'Bearer r3adx' });
    for my $route ('/events', '/stats')
    {
        for my $who (qw(none publish wrong))
        {
            my $r = http($sc->{port}, 'GET', $route, headers => $auth{$who});
            is($r->{status}, 401, "GET $route with the $who token: 401");
            like($r->{headers}{'www-authenticate'} // '', qr/^Bearer/, "GET $route with the $who token: WWW-Authenticate");
        }
        is(http($sc->{port}, 'GET', $route, headers => $auth{read})->{status}, 200, "GET $route with the read token: 200");
    }
    is(http($sc->{port}, 'GET', $_)->{status}, 200, "GET $_ stays open") for ('/healthz', '/metrics');
    is(http($sc->{port}, 'POST', '/publish', body => sprintf($event, 't1'), headers => $auth{read})->{status},
        401, 'the read token does not publish');
    is(http($sc->{port}, 'POST', '/publish', body => sprintf($event, 't1'), headers => $auth{publish})->{status},
        200, 'the publish token does');
    my $events = http($sc->{port}, 'GET', '/events', headers => $auth{read});
    is(scalar(@{ json($events) }), 1, 'and the reader sees the event');
    my $metrics = http($sc->{port}, 'GET', '/metrics');
    like($metrics->{body}, qr/^aggr_received_total 1$/m, '/metrics still counts');
    unlike($metrics->{body}, qr/aggr_topic_events|edge/, 'but names no topic while a read token is set');
    stop_sidecar($sc);

    # an empty token is a mistake, not "no authentication"
    my $bin = $ENV{AGGR_SIDECAR} || 'sidecar/aggr-sidecar';
    for my $case ([ '--token=', {} ], [ '--read-token=', {} ], [ '', { AGGR_TOKEN => '' } ], [ '', { AGGR_READ_TOKEN => '' } ])
    {
        my ($flag, $env) = @$case;
        local %ENV = (%ENV, %$env);
        my $out = `$bin --listen=127.0.0.1:1 $flag 2>&1`;
        my $status = $? >> 8;
        my $what = $flag || join('', map { "$_=''" } keys %$env);
        is($status, 2, "$what: refused at start");
        like($out, qr/is empty; leave it unset/, "$what: says why");
    }
    $node->stop;
}

# --- a /healthz flood ----------------------------------------------------
{
    my $node = new_node('flood', track_functions => 'pl');
    my $sc = start_sidecar($node, args => ['--threads=2']);
    wait_healthz($sc->{port});
    my $get = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    # aggr-publisher sends 4,000 events at 1,000/s while the flood runs
    my $pub = $ENV{AGGR_PUBLISHER} // 'publisher/aggr-publisher';
    my $publisher = spawn("$sc->{log}.publisher", $pub, '--url', "http://127.0.0.1:$sc->{port}",
        '--events', '4000', '--dup-ratio', '0', '--batch', '100', '--rate', '1000',
        '--source', 'flood', '--quiet');
    my @answers;
    my $started = time();
    while (time() - $started < 3)    # rounds of 300 checks, 64 at a time, for 3 s
    {
        push @answers, converse([ map { { port => $sc->{port}, bytes => $get } } 1 .. 300 ], window => 64);
    }
    my $seconds = time() - $started;
    my $checks = scalar(@answers);
    is(scalar(grep { $_->{status} == 200 } @answers), $checks, "every one of the $checks health checks answered 200");
    waitpid($publisher, 0);
    is($? >> 8, 0, 'aggr-publisher, publishing beside the flood, had every batch acknowledged');
    stop_sidecar($sc);    # its backends exit and report their function calls
    my $calls = $node->safe_psql('postgres',
        q{SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions WHERE funcname = 'aggr_health'});
    ok($calls <= $seconds + 3,
        "$checks health checks in ${\ sprintf('%.1f', $seconds)} s ran aggr_health() $calls times");
    check_invariants($node, 'after the flood', unique => 4000);
    $node->stop;
}

# --- pages bounded in bytes ----------------------------------------------
{
    my $node = new_node('pages');
    my $sc = start_sidecar($node, args => ['--max-page=10K']);
    wait_healthz($sc->{port});
    my $pad = 'x' x 1000;
    $node->safe_psql('postgres', qq{SELECT aggr_ingest(jsonb_agg(jsonb_build_object('topic', 'big',
        'event_id', 'b' || lpad(g::text, 3, '0'), 'timestamp', 0, 'source', 's', 'payload', jsonb_build_object('pad', '$pad'))))
        FROM generate_series(1, 100) g});
    # one event larger than a page on its own comes whole, in a page of its own
    $node->safe_psql('postgres', qq{SELECT aggr_ingest(jsonb_build_object('topic', 'big', 'event_id', 'b999',
        'timestamp', 0, 'source', 's', 'payload', jsonb_build_object('pad', repeat('y', 30000))))});
    my ($url, $pages, $over) = ('/events?topic=big&limit=100', 0, 0);
    my @seen;
    while ($url && $pages < 50)
    {
        my $r = http($sc->{port}, 'GET', $url);
        is($r->{status}, 200, 'the first page: 200') if $pages == 0;
        my $events = json($r) or last;
        push @seen, map { $_->{event_id} } @$events;
        # what the page holds before its last event stays within the bound
        my $before_last = length($r->{body}) - length($events->[-1]{payload}{pad}) - 300;
        $over = $before_last if $before_last > 10 * 1024 && $before_last > $over;
        $pages++;
        ($url) = ($r->{headers}{link} // '') =~ /^<([^>]+)>; rel="next"$/;
    }
    is(scalar(@seen), 101, 'following Link collects every event');
    is_deeply(\@seen, [ (map { sprintf('b%03d', $_) } 1 .. 100), 'b999' ], 'each once, in seq order');
    ok($pages >= 11, "the 110 KB of events came in $pages pages, not one");
    is($over, 0, 'every page ends with the event that passes 10K, not later');
    stop_sidecar($sc);
    $node->stop;
}

# --- slow bodies -------------------------------------------------------
{
    my $node = new_node('slow');
    my $sc = start_sidecar($node,
        args => [ '--max-body=1M', '--max-buffered=16M', '--timeout=3', '--min-body-rate=1K' ]);
    wait_healthz($sc->{port});
    my $head = "POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      . "Content-Length: 1048576\r\n\r\n";
    # 16 clients declare 1 MB each (all of --max-buffered) and would send a
    # byte every half second for 15 s
    my @slow = map { { port => $sc->{port}, send => [ [ 0, $head ], map { [ 0.5, '[' ] } 1 .. 30 ] } } 1 .. 16;
    my $pub = $ENV{AGGR_PUBLISHER} // 'publisher/aggr-publisher';
    my $publisher = spawn("$sc->{log}.publisher", 'sh', '-c',
        "sleep 1; exec $pub --url http://127.0.0.1:$sc->{port} --events 2000 --dup-ratio 0"
          . " --batch 100 --rate 1000 --source slow --max-retry-time 2 --quiet");
    my $t0 = time();
    my @answers = converse(\@slow, timeout => 10);
    waitpid($publisher, 0);
    is($? >> 8, 0, 'publishes beside 16 slow 1 MB bodies were all acknowledged');
    ok(!grep({ $_->{status} == 200 } @answers), 'no slow body was taken as a request');
    my @dropped = grep { $_->{closed} } @answers;
    is(scalar(@dropped), 16, 'every slow body was dropped by the server');
    # (not a speed check: without the rate bound they stay open past 15 s)
    ok(time() - $t0 < 10, sprintf('once it fell below 1K/s after the 3 s grace, %.1f s in', time() - $t0));
    check_invariants($node, 'after the slow bodies', unique => 2000);
    stop_sidecar($sc);
    $node->stop;
}

# --- NDJSON and compressed bodies, as README shows them -----------------
{
    my $node = new_node('shippers');
    my $sc = start_sidecar($node, args => ['--max-body=1M']);
    wait_healthz($sc->{port});
    my $dir = $node->basedir;
    my $url = "http://127.0.0.1:$sc->{port}/publish";
    open(my $fh, '>', "$dir/events.ndjson") or die;
    print $fh sprintf($event, "nd$_") . "\n" for 1 .. 300;
    close $fh;
    # README: curl --data-binary @events.ndjson -H 'Content-Type: application/x-ndjson' URL
    my $out = `curl -sS -w ' %{http_code}' --data-binary \@$dir/events.ndjson -H 'Content-Type: application/x-ndjson' $url`;
    like($out, qr/"unique": 300.* 200$/, 'NDJSON with curl: 300 events stored');
    # README: gzip -c events.ndjson | curl --data-binary @- -H 'Content-Encoding: gzip' ...
    $out = `gzip -c $dir/events.ndjson | curl -sS -w ' %{http_code}' --data-binary \@- -H 'Content-Type: application/x-ndjson' -H 'Content-Encoding: gzip' $url`;
    like($out, qr/"duplicates": 300.* 200$/, 'gzip NDJSON with curl: the same 300, all duplicates');
    open($fh, '>', "$dir/batch.json") or die;
    print $fh '[' . join(',', map { sprintf($event, "gz$_") } 1 .. 50) . ']';
    close $fh;
    $out = `gzip -c $dir/batch.json | curl -sS -w ' %{http_code}' --data-binary \@- -H 'Content-Encoding: gzip' $url`;
    like($out, qr/"unique": 50.* 200$/, 'a gzip JSON array: stored');
    $out = `(head -n 100 $dir/events.ndjson | gzip -c; tail -n 200 $dir/events.ndjson | gzip -c) | curl -sS -w ' %{http_code}' --data-binary \@- -H 'Content-Type: application/x-ndjson' -H 'Content-Encoding: gzip' $url`;
    like($out, qr/"accepted": 300.*"duplicates": 300.* 200$/, 'two gzip members (RFC 1952) are one body');
    $out = `perl -MCompress::Zlib -0777 -ne 'print compress(\$_)' $dir/batch.json | curl -sS -w ' %{http_code}' --data-binary \@- -H 'Content-Encoding: deflate' $url`;
    like($out, qr/"duplicates": 50.* 200$/, 'a deflate (zlib) body: read too');

    # aggr-publisher's own --format ndjson --gzip, checked by its --verify
    my $pub = $ENV{AGGR_PUBLISHER} // 'publisher/aggr-publisher';
    $out = `$pub --url http://127.0.0.1:$sc->{port} --events 2000 --format ndjson --gzip --source ndgz --verify --quiet 2>&1`;
    is($? >> 8, 0, 'aggr-publisher --format ndjson --gzip: verified') or diag($out);
    is($node->safe_psql('postgres', q{SELECT count(*) FROM aggr.events WHERE source = 'ndgz'}), 1300,
        'its 1,300 unique events are stored');

    # errors: the line is named; bad or unknown encodings; a bomb is a 413
    my $r = http($sc->{port}, 'POST', '/publish', headers => { 'Content-Type' => 'application/x-ndjson' },
        body => sprintf($event, 'x1') . "\n{\"topic\": \n");
    is($r->{status}, 400, 'NDJSON with a broken line: 400');
    like(json($r)->{error}, qr/^line 2: /, 'the error names line 2');
    $r = http($sc->{port}, 'POST', '/publish', headers => { 'Content-Type' => 'application/x-ndjson' },
        body => sprintf($event, 'x1') . "\n" . '{"topic":"edge","event_id":7,"timestamp":0,"source":"s"}' . "\n");
    is($r->{status}, 422, 'NDJSON with a bad event: 422');
    like(json($r)->{error}, qr/^event 1: event_id/, 'the error names event 1 (line 2)');
    $r = http($sc->{port}, 'POST', '/publish', headers => { 'Content-Encoding' => 'br' }, body => sprintf($event, 'x2'));
    is($r->{status}, 415, 'Content-Encoding br: 415');
    $r = http($sc->{port}, 'POST', '/publish', headers => { 'Content-Encoding' => 'gzip' }, body => sprintf($event, 'x3'));
    is($r->{status}, 400, 'a body that is not gzip: 400');
    like(json($r)->{error}, qr/not valid gzip/, 'says so');
    system("head -c 200000000 /dev/zero | gzip -1 > $dir/bomb.gz") == 0 or die;
    ok(-s "$dir/bomb.gz" < 1024 * 1024, 'a 200 MB bomb compresses under --max-body');
    my $rss_before = SidecarTest::rss_kb($sc->{pid});
    $out = `curl -sS -o /dev/null -w '%{http_code}' --data-binary \@$dir/bomb.gz -H 'Content-Encoding: gzip' $url`;
    is($out, '413', 'the bomb: 413, decided while inflating');
    ok(SidecarTest::rss_kb($sc->{pid}) - $rss_before < 20 * 1024, 'and the sidecar did not grow by the inflated size');
    is($node->safe_psql('postgres', q{SELECT count(*) FROM aggr.events WHERE event_id LIKE 'x%'}), 0,
        'nothing of the refused requests was stored');
    check_invariants($node, 'shippers', unique => 1650, duplicates => 1350);
    stop_sidecar($sc);
    $node->stop;
}

done_testing();
