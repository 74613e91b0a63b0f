# The queue against any producer, with real Redis.  The consumer is held
# behind a lock on aggr.consumers while the queue fills, so that one take
# meets all of it:
#   0. small elements ahead of 1 MB ones: Redis copies little more than a
#      batch; an envelope of aggr larger than a lowered limit is kept whole;
#      envelopes that fill a batch each are copied one per take;
#   1. three 400 MB invalid elements, then normal events: the big ones are
#      dead-lettered by size and first bytes, the rest stored;
#   2. 130 events of 8 MB through aggr_publish: all stored, in batches that
#      keep within aggr.batch_bytes;
#   3. forged envelopes (an old-format count, an unregistered id, a copy of a
#      real one) ahead of real ones: the depth is exact, the bound holds for
#      aggr's publishes and aggr.batch_size holds; a million tiny elements:
#      the default bound holds, batches keep to aggr.batch_size;
#   4. a batch that fails as a whole for a reason that repeats is ingested
#      element by element: only the poison is dead-lettered;
#   5. hundreds of failed replays (a transient error): the consumer's private
#      memory stays flat, and the batch is stored once when the error goes;
#   6. a script error is reported as one, not as an outage, and a busy Redis
#      as an outage, not a refusal; a flushed script
#      cache is reloaded; a cancel of the waiting consumer loses nothing; a
#      batch that kills its consumer every time is dead-lettered after 10;
#   7. the README's ACL line is all the broker user needs, and a
#      maxmemory-policy that may evict the queue is warned about.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use lib 't';
use AggrTest qw(new_node start_redis stop_redis redis_cmd wait_for stats
  wait_drained consumer_pids check_invariants publish spawn);

# no persistence: the test pushes gigabytes
my $redis = start_redis(undef, '--appendonly', 'no');
my $node  = new_node(
    'queue',
    'aggr.broker_url'    => $redis->{url},
    'aggr.worker_count'  => 1,
    'aggr.poll_interval' => '200ms',
    'aggr.test_backoff'  => '10ms',
    'restart_after_crash' => 'on');
wait_for(sub { consumer_pids($node) == 1 }, 30) or die 'the consumer did not start';
my %total = (received => 0, unique => 0);

# every committed batch's events, as the consumer records them
$node->safe_psql('postgres', q{
    CREATE TABLE batch_log (id serial, events bigint);
    CREATE FUNCTION log_batch() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO batch_log (events)
        VALUES (NEW.events - CASE WHEN TG_OP = 'UPDATE' THEN OLD.events ELSE 0 END);
        RETURN NEW;
    END $$;
    CREATE TRIGGER log_batch AFTER INSERT OR UPDATE ON aggr.consumers
        FOR EACH ROW EXECUTE FUNCTION log_batch();
});

sub sql { return $node->safe_psql('postgres', $_[0]); }
sub depth { return sql(q{SELECT aggr.runtime_status() ->> 'queue_depth'}); }
sub event { my ($topic, $id, $extra) = @_; return qq({"topic": "$topic", "event_id": "$id", "timestamp": 0, "source": "queue"$extra}); }
sub reload { sql("ALTER SYSTEM SET $_[0] = '$_[1]'"); sql('SELECT pg_reload_conf()'); }

# Holds the consumer: a session locks aggr.consumers, one event is published,
# and the consumer takes it and waits on the lock with the rest of the queue
# behind it.  Returns the release.
sub hold_consumer
{
    my ($tag) = @_;
    my ($out, $err) = ('', '');
    my $h = IPC::Run::start(
        [ 'psql', '-X', '-d', $node->connstr('postgres'), '-c',
          'BEGIN; LOCK TABLE aggr.consumers IN EXCLUSIVE MODE; SELECT pg_sleep(600)' ],
        '>', \$out, '2>', \$err);
    wait_for(sub { sql(q{SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
                         WHERE a.query LIKE 'BEGIN; LOCK TABLE aggr.consumers%' AND l.granted
                           AND l.relation = 'aggr.consumers'::regclass}) == 1 }, 30)
      or die 'could not lock aggr.consumers';
    publish($node, event('hold', $tag));
    $total{received}++;
    $total{unique}++;
    wait_for(sub { sql(q{SELECT count(*) FROM pg_stat_activity
                         WHERE backend_type = 'aggr consumer' AND wait_event_type = 'Lock'}) == 1 }, 30)
      or die 'the consumer did not take the held batch';
    return sub {
        sql(q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity
              WHERE query LIKE 'BEGIN; LOCK TABLE aggr.consumers%'});
        $h->finish;
    };
}

sub drained
{
    my ($name) = @_;
    ok(wait_drained($node, $redis, 300), "$name: queue drained");
    wait_for(sub { stats($node)->{received} >= $total{received} }, 60);
    check_invariants($node, $name, %total);
}

# 0. small elements ahead of large ones (aggr.batch_bytes = 4 MB): a take
#    copies little more than it keeps; an envelope of aggr larger than the
#    limit (lowered after it was published) is still taken whole
{
    reload('aggr.batch_bytes', '4MB');
    my $release = hold_consumer('h0');
    redis_cmd($redis, 'RPUSH', 'aggregator:events', map { event('small', $_, ', "payload": {"pad": "' . ('s' x 10000) . '"}') } 1 .. 6);
    # one command each, so that Redis's query buffer does not raise the peak
    redis_cmd($redis, 'RPUSH', 'aggregator:events', 'm' x (1024 * 1024)) for 1 .. 100;
    $total{received} += 6;
    $total{unique}   += 6;
    my $peak = sub { redis_cmd($redis, 'INFO', 'memory') =~ /used_memory_peak:(\d+)/ ? $1 : die 'no peak' };
    my $before = $peak->();
    $release->();
    drained('small before large');
    my $grew = $peak->() - $before;
    cmp_ok($grew, '<', 32 * 1024 * 1024, "small before large: Redis's peak grew by $grew bytes, not by the 100 MB behind");
    is(sql(q{SELECT count(*) FROM aggr.rejected WHERE length(raw) = 1048576}), 100, 'small before large: the large ones dead-lettered whole');

    $release = hold_consumer('h0b');
    my $blob = ', "payload": {"blob": "' . ('e' x (1000 * 1000)) . '"}';
    publish($node, '[' . join(',', map { event('wide', $_, $blob) } 1 .. 3) . ']');
    # and a single event, pushed as plain JSON like another producer's
    publish($node, event('wide', 4, $blob));
    reload('aggr.batch_bytes', '256kB');    # the single event measures about 1 MB
    $total{received} += 4;
    $total{unique}   += 4;
    $release->();
    drained('wide envelope');
    is(sql(q{SELECT count(*) FROM aggr.events WHERE topic = 'wide' AND length(payload ->> 'blob') = 1000000}), 4,
        'wide envelope: an envelope and a single event of aggr larger than a lowered aggr.batch_bytes are stored whole');
    sql('ALTER SYSTEM RESET aggr.batch_bytes');
    sql('SELECT pg_reload_conf()');

    # envelopes of a full batch each (aggr.batch_size 500): a take copies
    # the one it keeps (one SORT ... STORE), not as many of them as
    # aggr.batch_bytes would hold (doubling: 1, 2, 4, ... of them)
    $release = hold_consumer('h0c');
    my $pad = ', "payload": {"pad": "' . ('p' x 2000) . '"}';
    for my $k (1 .. 24)
    {
        publish($node, '[' . join(',', map { event('full', "$k-$_", $pad) } 1 .. 500) . ']');
    }
    $total{received} += 12000;
    $total{unique}   += 12000;
    redis_cmd($redis, 'CONFIG', 'RESETSTAT');
    $release->();
    drained('full envelopes');
    my ($copies) = redis_cmd($redis, 'INFO', 'commandstats') =~ /cmdstat_sort:calls=(\d+)/;
    cmp_ok($copies // 0, '<=', 30, "full envelopes: 24 envelopes of 500 events taken with $copies copies, one per take");
    is(sql(q{SELECT count(*) FROM aggr.events WHERE topic = 'full'}), 12000, 'full envelopes: all stored');
}

# 1. three 400 MB invalid elements, then normal events, in one take
{
    my $release = hold_consumer('h1');
    my $big = 'x' x (400 * 1024 * 1024);
    redis_cmd($redis, 'RPUSH', 'aggregator:events', $big) for 1 .. 3;
    undef $big;
    redis_cmd($redis, 'RPUSH', 'aggregator:events', map { event('after-big', $_) } 1 .. 5);
    is(depth(), 8, 'big: the depth counts each big element as one event');
    $total{received} += 5;
    $total{unique}   += 5;
    $release->();
    drained('big');
    is(sql(q{SELECT count(*) FROM aggr.rejected WHERE reason LIKE 'element of 419430400 bytes is larger than any batch%'
             AND length(raw) = 256 AND raw = convert_to(repeat('x', 256), 'UTF8')}),
        3, 'big: each dead-lettered with its size and first 256 bytes');
    is(sql(q{SELECT count(*) FROM aggr.events WHERE topic = 'after-big'}), 5, 'big: the events behind them are stored');
}

# 2. 130 events of 8 MB through aggr_publish, queued while the consumer is held
{
    my $release = hold_consumer('h2');
    sql('TRUNCATE batch_log');
    sql(q{DO $$
          BEGIN
              FOR i IN 1 .. 130 LOOP
                  PERFORM aggr_publish(jsonb_build_object('topic', 'big8', 'event_id', i::text,
                      'timestamp', 0, 'source', 'queue', 'payload', jsonb_build_object('blob', repeat('y', 8 * 1024 * 1024))));
                  COMMIT;
              END LOOP;
          END $$});
    is(depth(), 130, '8 MB: 130 events queued');
    $total{received} += 130;
    $total{unique}   += 130;
    $release->();
    drained('8 MB');
    is(sql(q{SELECT count(*) FROM aggr.events WHERE topic = 'big8' AND length(payload ->> 'blob') = 8388608}),
        130, '8 MB: all 130 stored whole');
    cmp_ok(sql('SELECT max(events) FROM batch_log'), '<=', 3, '8 MB: no batch holds more than 32 MB of them (MEMORY USAGE counts 10 MB each)');
    my ($ret, $out, $err) = $node->psql('postgres',
        "\\set VERBOSITY verbose\nSELECT aggr_publish(jsonb_build_object('topic', 'big8', 'event_id', 'huge', 'timestamp', 0, 'source', 'queue', 'payload', jsonb_build_object('blob', repeat('z', 40 * 1024 * 1024))))");
    like($err, qr/54000: request is too large for the queue/, '8 MB: an element larger than aggr.batch_bytes is refused at publish (54000)');
}

# 3. forged envelopes ahead of real ones
{
    my $release = hold_consumer('h3');
    sql('TRUNCATE batch_log');
    reload('aggr.batch_size', 5);
    my $four = sub { '[' . join(',', map { event('real', "$_[0]-$_") } 1 .. 4) . ']' };
    redis_cmd($redis, 'RPUSH', 'aggregator:events',
        '{"aggr_events":1000000,"events":[]}',
        '{"aggr_envelope":"00000000000000000000000000000000","events":[' . event('forged', 'f1') . ']}');
    publish($node, $four->($_)) for 'a', 'b', 'c';
    # a copy of a registered envelope is just an element
    redis_cmd($redis, 'RPUSH', 'aggregator:events', redis_cmd($redis, 'LINDEX', 'aggregator:events', 2));
    is(depth(), 15, 'forged: depth = 2 forged + 12 real + 1 copy, the events that will be stored or dead-lettered');
    reload('aggr.queue_maxsize', 17);
    wait_for(sub { sql('SHOW aggr.queue_maxsize') eq '17' }, 10);
    like(publish($node, '[' . event('real', 'd-1') . ',' . event('real', 'd-2') . ']'), qr/"accepted": 2/,
        'forged: a publish up to the bound is queued');
    my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT aggr_publish('" . event('real', 'e-1') . "')");
    like($err, qr/53000: queue "aggregator:events" is full/, 'forged: one event past the bound is refused');
    is(depth(), 17, 'forged: the refused publish queued nothing');
    $total{received} += 14;
    $total{unique}   += 14;
    $release->();
    drained('forged');
    is(sql(q{SELECT count(*) FROM aggr.events WHERE topic = 'real'}), 14, 'forged: every real event stored');
    is(sql(q{SELECT count(*) FROM aggr.events WHERE topic = 'forged'}), 0, 'forged: nothing of a forged envelope stored');
    cmp_ok(sql('SELECT max(events) FROM batch_log'), '<=', 5, 'forged: no batch passed aggr.batch_size = 5');
    sql('ALTER SYSTEM RESET aggr.batch_size');
    sql('ALTER SYSTEM RESET aggr.queue_maxsize');
    sql('SELECT pg_reload_conf()');
}

# 3b. a million tiny elements of another producer: the depth is a million,
#     the default bound (a million) refuses aggr's next publish, and the
#     consumer drains them in batches of at most aggr.batch_size
{
    my $release = hold_consumer('h3b');
    sql('TRUNCATE batch_log');
    my $rejected = sql('SELECT count(*) FROM aggr.rejected');
    redis_cmd($redis, 'EVAL', q{for i = 1, 1000000, 1000 do
                                  local t = {} for j = i, i + 999 do t[#t + 1] = 'tiny' .. j end
                                  redis.call('RPUSH', KEYS[1], unpack(t)) end
                                return redis.call('LLEN', KEYS[1])}, 1, 'aggregator:events');
    is(depth(), 1000000, 'tiny: the depth is a million');
    my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT aggr_publish('" . event('tiny', 'over') . "')");
    like($err, qr/53000: queue "aggregator:events" is full/, 'tiny: the default bound refuses the next publish of aggr');
    $release->();
    drained('tiny');
    is(sql('SELECT count(*) FROM aggr.rejected') - $rejected, 1000000, 'tiny: each dead-lettered');
    cmp_ok(sql('SELECT max(events) FROM batch_log'), '<=', 500, 'tiny: no batch passed aggr.batch_size');
}

# 4. a batch that fails as a whole for a reason that would repeat (a user's
#    trigger refusing one row) is ingested element by element
{
    my $offset = -s $node->logfile;
    sql(q{CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
              IF NEW.event_id = 'poison-row' THEN RAISE EXCEPTION 'test: this row is refused'; END IF;
              RETURN NEW;
          END $$;
          CREATE TRIGGER refuse_poison BEFORE INSERT ON aggr.events
              FOR EACH ROW EXECUTE FUNCTION refuse_poison()});
    my $release = hold_consumer('h4');
    redis_cmd($redis, 'RPUSH', 'aggregator:events', map { event('split', $_) } 'a', 'poison-row', 'b');
    $total{received} += 2;
    $total{unique}   += 2;
    $release->();
    drained('split');
    is(sql(q{SELECT string_agg(event_id, ',' ORDER BY event_id) FROM aggr.events WHERE topic = 'split'}),
        'a,b', 'split: the other events of the batch are stored');
    is(sql(q{SELECT reason FROM aggr.rejected WHERE convert_from(raw, 'UTF8') LIKE '%poison-row%'}),
        'test: this row is refused', 'split: the element that fails alone is dead-lettered with its error');
    like(slurp_file($node->logfile, $offset), qr/element by element after it failed as a whole/,
        'split: the log says why');
    sql('DROP TRIGGER refuse_poison ON aggr.events');
}

# 5. hundreds of failed replays: a transient error (serialization failure)
#    at every attempt, with a batch of about 1 MB; memory stays flat
{
    sql(q{CREATE TABLE fail_now ();
          INSERT INTO fail_now DEFAULT VALUES;
          CREATE SEQUENCE failures;
          CREATE FUNCTION fail_transiently() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
              IF EXISTS (SELECT FROM fail_now) THEN
                  PERFORM nextval('failures');    -- not rolled back
                  RAISE EXCEPTION 'test: transient failure' USING ERRCODE = '40001';
              END IF;
              RETURN NEW;
          END $$;
          CREATE TRIGGER fail_transiently BEFORE INSERT OR UPDATE ON aggr.consumers
              FOR EACH ROW EXECUTE FUNCTION fail_transiently()});
    my $pad = ', "payload": {"pad": "' . ('p' x 5000) . '"}';
    publish($node, '[' . join(',', map { event('replay', $_, $pad) } 1 .. 200) . ']');
    $total{received} += 200;
    $total{unique}   += 200;
    my ($pid) = consumer_pids($node);
    my $cycles = sub { sql(q{SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM failures}) };
    my $anon = sub { slurp_file("/proc/$pid/status") =~ /RssAnon:\s+(\d+) kB/ ? $1 : die 'no RssAnon' };
    ok(wait_for(sub { $cycles->() >= 30 }, 120), 'replay: the batch is replayed after each failure');
    my $before = $anon->();
    ok(wait_for(sub { $cycles->() >= 330 }, 300), 'replay: 300 more failed replays');
    my $after = $anon->();
    my ($still) = consumer_pids($node);
    is($still, $pid, 'replay: the same consumer process throughout');
    cmp_ok($after - $before, '<', 4096, "replay: private memory flat ($before kB -> $after kB)");
    diag("consumer RssAnon after 30 failed replays: $before kB, after 330: $after kB");
    is(sql(q{SELECT count(*) FROM aggr.events WHERE topic = 'replay'}), 0, 'replay: nothing committed while failing');
    sql('DELETE FROM fail_now');
    drained('replay');
    is(sql(q{SELECT count(*) FROM aggr.events WHERE topic = 'replay'}), 200, 'replay: stored once the error is gone');
    sql('DROP TRIGGER fail_transiently ON aggr.consumers');
}

# 6. a script error is reported as one; a flushed script cache is reloaded
{
    my $offset = -s $node->logfile;
    redis_cmd($redis, 'SET', 'aggregator:events', 'not a list');
    my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT aggr_publish('" . event('script', 's1') . "')");
    like($err, qr/38000: the broker refused to queue 1 events/, 'script error: the publish fails with 38000');
    like($err, qr/WRONGTYPE/, "script error: with Redis's message");
    ok(wait_for(sub { slurp_file($node->logfile, $offset) =~ /the broker refused the queue script: .*WRONGTYPE/ }, 30),
        'script error: the consumer logs it as a script error');
    unlike(slurp_file($node->logfile, $offset), qr/lost the broker/, 'script error: not as an outage');
    like(sql('SELECT aggr_health()'), qr/"broker_error": "Redis refused the queue script: .*WRONGTYPE/,
        'script error: aggr_health says what Redis refused');
    redis_cmd($redis, 'DEL', 'aggregator:events');
    redis_cmd($redis, 'SCRIPT', 'FLUSH');
    like(publish($node, event('script', 's2')), qr/"accepted": 1/, 'NOSCRIPT: the push script is loaded again');
    $total{received}++;
    $total{unique}++;
    drained('script error');
    is(sql(q{SELECT count(*) FROM aggr.events WHERE topic = 'script'}), 1, 'NOSCRIPT: the consumer loaded its script again');
}

# 6a. Redis busy in a long script: a publish then is an outage to wait out
#     (08006, the sidecar's 503 with Retry-After), not a refusal (38000, a
#     500); nothing is queued, and once Redis is free the next one goes in
{
    redis_cmd($redis, 'CONFIG', 'SET', 'lua-time-limit', '100');   # (Redis 7: busy-reply-threshold)
    my $busy = spawn("$redis->{dir}/busy.log", 'redis-cli', '-p', $redis->{port}, 'EVAL',
        q{local function now() local t = redis.call('TIME'); return t[1] * 1000000 + t[2] end
          local stop = now() + 3000000; while now() < stop do end; return 1}, '0');
    ok(wait_for(sub { (redis_cmd($redis, 'PING') // '') =~ /BUSY/ }, 10), 'busy Redis: it answers BUSY');
    my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT aggr_publish('" . event('busy', 'b1') . "')");
    like($err, qr/08006: could not queue 1 events on the broker/, 'busy Redis: the publish fails as an outage (08006)');
    like($err, qr/Redis cannot run commands now: BUSY/, "busy Redis: with Redis's message");
    waitpid($busy, 0);
    redis_cmd($redis, 'CONFIG', 'SET', 'lua-time-limit', '5000');
    like(publish($node, event('busy', 'b2')), qr/"accepted": 1/, 'busy Redis: afterwards a publish goes in');
    $total{received}++;
    $total{unique}++;
    drained('busy');
    is(sql(q{SELECT string_agg(event_id, ',') FROM aggr.events WHERE topic = 'busy'}), 'b2',
        'busy Redis: only the accepted event is stored');
}

# 6b. a cancel (pg_cancel_backend) while the consumer waits on an empty queue
#     leaves no reply of Redis unread: the next batch is taken and stored
{
    my ($pid) = consumer_pids($node);
    ok(wait_for(sub { sql("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $pid") eq 'Extension' }, 10),
        'cancel: the consumer waits');
    sql("SELECT pg_cancel_backend($pid)");
    like(publish($node, event('cancel', 'c1')), qr/"accepted": 1/, 'cancel: a publish after it');
    $total{received}++;
    $total{unique}++;
    drained('cancel');
    is(sql(q{SELECT count(*) FROM aggr.events WHERE topic = 'cancel'}), 1, 'cancel: the consumer goes on');
    is((consumer_pids($node))[0], $pid, 'cancel: the same consumer process, not a restarted one');
}

# 6c. a batch that kills its consumer every time (here: the test crash point
#     before COMMIT) goes element by element after 3 hand-outs and is
#     dead-lettered unparsed after 10, so the queue moves on
{
    my $offset = -s $node->logfile;
    sql("ALTER SYSTEM SET aggr.test_crash_point = 'before_commit'");
    sql('SELECT pg_reload_conf()');
    publish($node, '[' . event('doomed', 1) . ',' . event('doomed', 2) . ']');
    ok(wait_for(sub { slurp_file($node->logfile, $offset) =~ /dead-lettering batch \S+ of slot 1 as it is: handed out 10 times/ }, 90),
        'doomed: after 10 hand-outs the batch is dead-lettered as it is');
    like(slurp_file($node->logfile, $offset), qr/element by element after it failed as a whole/, 'doomed: element by element first');
    sql('ALTER SYSTEM RESET aggr.test_crash_point');
    sql('SELECT pg_reload_conf()');
    wait_for(sub { consumer_pids($node) == 1 }, 30);
    drained('doomed');
    is(sql(q{SELECT count(*) FROM aggr.rejected WHERE reason LIKE 'batch handed out % times without committing; not parsed'
             AND convert_from(raw, 'UTF8') LIKE '%doomed%'}), 1, 'doomed: its element is in aggr.rejected, raw');
}

# 7. the README's ACL line, and the eviction warning
{
    my ($acl) = slurp_file('README.md') =~ /^ACL SETUSER (aggr .*)$/m or die 'README has no ACL SETUSER line';
    $acl =~ s/>\S+/>queue-secret/;
    is(redis_cmd($redis, 'ACL', 'SETUSER', split(' ', $acl)), 'OK', 'ACL: the README line is accepted');
    redis_cmd($redis, 'CONFIG', 'SET', 'maxmemory-policy', 'allkeys-lru');
    $node->append_conf('postgresql.conf', "aggr.broker_url = 'redis://aggr:queue-secret\@127.0.0.1:$redis->{port}/0'\n");
    my $offset = -s $node->logfile;
    $node->restart;
    wait_for(sub { consumer_pids($node) == 1 }, 30);
    ok(wait_for(sub { slurp_file($node->logfile, $offset) =~ /maxmemory-policy is allkeys-lru, so Redis may evict/ }, 30),
        'eviction: the consumer warns about maxmemory-policy allkeys-lru');
    like(publish($node, '[' . event('acl', 1) . ',' . event('acl', 2) . ']'), qr/"accepted": 2/, 'ACL: publishing works');
    # a replay under that user too: the consumer exits before its COMMIT once
    sql("ALTER SYSTEM SET aggr.test_crash_point = 'before_commit'");
    sql('SELECT pg_reload_conf()');
    publish($node, event('acl', 3));
    ok(wait_for(sub { slurp_file($node->logfile, $offset) =~ /exiting at test crash point/ }, 30), 'ACL: a batch to replay');
    sql('ALTER SYSTEM RESET aggr.test_crash_point');
    sql('SELECT pg_reload_conf()');
    $total{received}++;
    $total{unique}++;
    redis_cmd($redis, 'RPUSH', 'aggregator:events', 'not json');
    $total{received} += 2;
    $total{unique}   += 2;
    drained('ACL');
    is(sql(q{SELECT count(*) FROM aggr.events WHERE topic = 'acl'}), 3, 'ACL: the consumer takes, replays and stores');
    unlike(slurp_file($node->logfile, $offset), qr/NOPERM|refused the queue script/, 'ACL: nothing was refused');
    redis_cmd($redis, 'CONFIG', 'SET', 'maxmemory-policy', 'noeviction');
}

$node->stop;
stop_redis($redis);
done_testing();
