# A user's first step: a stock server (aggr installed, not preloaded).  CREATE
# EXTENSION works and direct mode is exact; a broker configured without the
# preload answers 55000 with a hint, never FATAL, and aggr_health() says why;
# the URL stays hidden from other roles.  Then the same server restarted with
# the preload picks the settings up from postgresql.conf and runs broker mode.
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use lib 't';
use AggrTest qw(new_node start_redis stop_redis redis_cmd demo_events event_batches
  check_invariants);
use JSON::PP;

my $node = new_node('stock', shared_preload_libraries => '');
is($node->safe_psql('postgres', 'SHOW shared_preload_libraries'), '', 'a stock server');
my ($version) = PostgreSQL::Test::Utils::slurp_file('aggr.control') =~ /^default_version = '([^']+)'/m;
is($node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'aggr'}),
    $version, "CREATE EXTENSION aggr on a stock server ($version, aggr.control's)");

# direct mode, exact
my @events = demo_events(2000, 0.35, 'stock');
for my $batch (event_batches(500, @events))
{
    $node->safe_psql('postgres', "SELECT aggr_publish(\$aggr\$$batch\$aggr\$)");
}
$node->safe_psql('postgres', q{SELECT aggr_ingest('{"topic": "x", "event_id": "1", "timestamp": 0, "source": "s"}')});
check_invariants($node, 'stock, direct', received => 2001, unique => 1301, duplicates => 700);
# retention by hand needs no worker: aggr_expire() on a stock server
is($node->safe_psql('postgres', q{SELECT aggr_expire('0 s', 500)}), 500, 'stock: aggr_expire() expires by hand');
check_invariants($node, 'stock, after aggr_expire()', received => 2001, unique => 1301, expired => 500);
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'aggr expiry'}),
    0, 'stock: no expiry worker');
my $health = decode_json($node->safe_psql('postgres', 'SELECT aggr_health()'));
is($health->{status}, 'ok', 'stock, direct: healthy');
is($health->{mode}, 'direct', 'stock, direct: mode direct');
is_deeply($health->{preloaded}, JSON::PP::false, 'stock: "preloaded": false');
if ($node->safe_psql('postgres', 'SHOW server_version_num') >= 180000)
{
    is($node->safe_psql('postgres',
        q{SELECT FROM aggr_health();
          SELECT module_name || ' ' || version FROM pg_get_loaded_modules() WHERE file_name = 'aggr.so'}),
        $node->safe_psql('postgres', q{SELECT 'aggr ' || default_version FROM pg_available_extensions WHERE name = 'aggr'}),
        'PostgreSQL 18 knows the loaded module by name and version');
}

# a broker asked for without the preload: 55000 with a hint, and the session lives
my $redis = start_redis();
is(redis_cmd($redis, 'CONFIG', 'SET', 'requirepass', 's3cret'), 'OK', 'Redis with a password');
$node->append_conf('postgresql.conf',
    "aggr.broker_url = 'redis://:s3cret\@127.0.0.1:$redis->{port}/0'\naggr.queue_key = 'stock:q'\n");
$node->reload;
$node->poll_query_until('postgres', q{SELECT current_setting('aggr.broker_url', true) <> ''})
  or die 'the reload did not reach new sessions';
my ($ret, $out, $err) = $node->psql('postgres',
    q{\set VERBOSITY verbose
SELECT aggr_publish('{"topic": "x", "event_id": "2", "timestamp": 0, "source": "s"}');
SELECT 'still connected';}, on_error_stop => 0);
like($err, qr/ERROR:  55000: broker mode needs aggr in shared_preload_libraries/, 'broker mode without the preload: 55000');
like($err, qr/HINT:  Add aggr to shared_preload_libraries and restart the server/, 'the hint names shared_preload_libraries');
like($out, qr/still connected/, 'the session survives');
$health = decode_json($node->safe_psql('postgres', 'SELECT aggr_health()'));
is($health->{status}, 'down', 'health: down');
is_deeply($health->{down}, ['preload'], 'health names the preload');
like($health->{hint}, qr/shared_preload_libraries/, 'health says how to fix it');
is($node->safe_psql('postgres', q{SELECT count(*) FROM aggr.events WHERE event_id = '2'}), '0', 'nothing stored');
# aggr_ingest is direct by definition and keeps working
$node->safe_psql('postgres', q{SELECT aggr_ingest('{"topic": "x", "event_id": "3", "timestamp": 0, "source": "s"}')});

# The URL (with its password) is hidden from other roles once aggr is loaded
# in their session.  Before that it is a plain placeholder (README says so and
# recommends session_preload_libraries on such a server): with it, a fresh
# session of a role that never touched aggr cannot read it either.
$node->safe_psql('postgres', q{CREATE ROLE reader LOGIN; GRANT EXECUTE ON FUNCTION aggr_health() TO reader});
($ret, $out, $err) = $node->psql('postgres', q{SELECT aggr_health(); SHOW aggr.broker_url},
    extra_params => [ '-U', 'reader' ], on_error_stop => 0);
like($err, qr/must be superuser|permission denied/, 'a role using aggr cannot SHOW aggr.broker_url');
unlike($out . $err, qr/s3cret/, 'nor see the password');
$node->append_conf('postgresql.conf', "session_preload_libraries = 'aggr'\n");
$node->reload;
$node->poll_query_until('postgres', q{SELECT current_setting('session_preload_libraries') = 'aggr'})
  or die 'the reload did not reach new sessions';
($ret, $out, $err) = $node->psql('postgres', q{SHOW aggr.broker_url; SELECT current_setting('aggr.broker_url')},
    extra_params => [ '-U', 'reader' ], on_error_stop => 0);
like($err, qr/must be superuser|permission denied/, 'with session_preload_libraries, a fresh session cannot read it');
unlike($out . $err, qr/s3cret/, 'nor see the password');
unlike(slurp_file($node->logfile), qr/FATAL|PANIC|server process .* was terminated/, 'no FATAL, no crash');

# restarted with the preload: the same settings are picked up, broker mode runs
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'aggr'\naggr.worker_count = 2\n");
$node->restart;
is($node->safe_psql('postgres', 'SHOW aggr.queue_key'), 'stock:q', 'queue_key from postgresql.conf');
$node->poll_query_until('postgres',
    q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'aggr consumer'})
  or die 'the consumers did not start';
$health = decode_json($node->safe_psql('postgres', 'SELECT aggr_health()'));
is($health->{status}, 'ok', 'preloaded: healthy') or diag explain $health;
is_deeply($health->{preloaded}, JSON::PP::true, 'preloaded: "preloaded": true');
is($health->{mode}, 'broker', 'preloaded: broker mode');
my $answer = decode_json($node->safe_psql('postgres',
    q{SELECT aggr_publish('[{"topic": "x", "event_id": "2", "timestamp": 0, "source": "s"},
                            {"topic": "x", "event_id": "1", "timestamp": 0, "source": "s"}]')}));
is($answer->{accepted}, 2, 'preloaded: queued');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM aggr.events WHERE event_id = '2'}),
    'the consumers ingest the queue');
check_invariants($node, 'after the preload', received => 2004, unique => 1303, duplicates => 701);

$node->stop;
stop_redis($redis);
done_testing();
