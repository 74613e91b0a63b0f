# The fault suite: nothing acknowledged is ever lost.  Two aggr-publishers send
# events with 35 % duplicates through aggr-sidecar (broker mode) and keep a
# ledger of every event's outcome; meanwhile one kind of fault is injected.
# After the queue drains, the ledger is checked against aggr.events and the
# counters: nothing acknowledged lost, nothing counted twice (received lies
# between the acknowledged events and those plus every attempt whose answer
# was lost), unique_processed = the distinct keys stored:
#   scenario: acknowledged N, lost 0, recovered R, duplicates D,
#             received X in [MIN, MAX], invariants ok
# Scenarios: consumers SIGTERMed, a consumer SIGKILLed (PostgreSQL restarts
# every backend), Redis SIGKILLed and restarted, PostgreSQL stopped with
# -m immediate, replies of Redis lost in transit (a proxy drops them), and a
# consumer exiting between its COMMIT and its acknowledgement, plus
# a control run proving that the check sees a loss when a consumer pops
# destructively through the same proxy.
#
# In make test it runs short (FAULTS_EVENTS=10000, one fault of each kind);
# make faults runs FAULTS_FULL=1: 200,000 events per scenario paced over about
# a minute, faults repeated (SIGTERM every 2 s, SIGKILL every 15 s, Redis every
# 20 s, PostgreSQL every 30 s, cuts every 10 s).
use strict;
use warnings;

use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use POSIX qw(:sys_wait_h);
use lib 't';
use AggrTest qw(new_node start_redis stop_redis redis_cmd wait_for stats
  wait_drained consumer_pids start_proxy cut_proxy check_ledger spawn);
use SidecarTest qw(start_sidecar stop_sidecar);

my $full      = $ENV{FAULTS_FULL} // 0;
my $events    = $ENV{FAULTS_EVENTS} // ($full ? 200000 : 10000);
my $batch     = $full ? 100 : 50;
# full runs are paced (--rate) to last about a minute, so faults repeat
my @pace      = $full ? ('--rate', int($events / 2 / 60)) : ();
my $publisher = $ENV{AGGR_PUBLISHER} // 'publisher/aggr-publisher';

my $redis = start_redis();
my $proxy = start_proxy($redis->{port});
my $node  = new_node(
    'faults',
    'aggr.broker_url'    => "redis://127.0.0.1:$proxy->{port}/0",
    'aggr.worker_count'  => 2,
    'aggr.poll_interval' => '500ms',
    'aggr.queue_maxsize' => 50000,
    'restart_after_crash' => 'on');
wait_for(sub { consumer_pids($node) == 2 }, 30) or die 'consumers did not start';
my $sidecar = start_sidecar($node, args => ['--threads=2']);
my $url = "http://127.0.0.1:$sidecar->{port}";
my $seed = 1000;
my @lines;

sub scenario
{
    my ($name, $period, $fault) = @_;
    my $before = stats($node);
    my $dir = PostgreSQL::Test::Utils::tempdir("faults-$name");
    my (@pids, @ledgers);
    for my $p (1, 2)
    {
        push @ledgers, "$dir/ledger$p.tsv";
        push @pids, spawn("$dir/publisher$p.log", $publisher, '--url', $url,
            '--events', int($events / 2), '--dup-ratio', '0.35', '--batch', $batch,
            '--concurrency', 2, '--seed', $seed++, '--source', "faults-$name",
            '--ledger', $ledgers[-1], '--max-retry-time', 180, '--timeout', 20, @pace, '--quiet');
    }
    my ($faults, $next) = (0, time() + ($full ? $period : 0.2));
    my %running = map { $_ => 1 } @pids;
    my $deadline = time() + 600;
    while (%running && time() < $deadline)
    {
        for my $pid (keys %running)
        {
            delete $running{$pid} if waitpid($pid, WNOHANG) == $pid;
        }
        if (%running && time() >= $next && ($full || $faults == 0))
        {
            $fault->();
            $faults++;
            $next = time() + $period;
        }
        usleep(50_000);
    }
    ok(!%running, "$name: publishers finished");
    $fault->() if $faults == 0;    # the run was too short: fault the drain
    $faults ||= 1;
    wait_for(sub { consumer_pids($node) == 2 }, 60);
    ok(wait_drained($node, $redis, 180), "$name: queue drained");

    my $r = check_ledger($node, "faults-$name", @ledgers);
    # the counters settle with the last commit; wait for them to stop moving
    my $after = stats($node);
    wait_for(sub { my $s = stats($node); my $same = $s->{received} == $after->{received}; $after = $s; $same && $s->{unique_processed} - $before->{unique_processed} == $r->{present} }, 30);
    my $d_unique   = $after->{unique_processed} - $before->{unique_processed};
    my $d_dup      = $after->{duplicate_dropped} - $before->{duplicate_dropped};
    my $d_received = $after->{received} - $before->{received};
    my $rows     = $node->safe_psql('postgres', 'SELECT count(*) FROM aggr.events WHERE expired_at IS NULL');
    my $inv = $after->{unique_processed} == $rows + $after->{expired}
      && $after->{received} == $after->{unique_processed} + $after->{duplicate_dropped}
      && $d_unique == $r->{present};
    is($r->{lost}, 0, "$name: no acknowledged event lost");
    is($r->{unexpected}, 0, "$name: nothing stored that was never sent");
    # nothing counted twice: a replayed batch that was committed before must
    # not add to received again
    cmp_ok($d_received, '>=', $r->{min_received}, "$name: received counts every acknowledged event");
    cmp_ok($d_received, '<=', $r->{max_received},
        "$name: received counts no event more often than it may have been sent ($d_received <= $r->{max_received})");
    ok($inv, "$name: invariants hold (unique_processed = count(*) + expired, received = unique + duplicates)");
    cmp_ok($r->{acknowledged}, '>', 0, "$name: events were acknowledged");
    my $line = sprintf('%s: acknowledged %d, lost %d, recovered %d, duplicates %d, received %d in [%d, %d], faults %d, invariants %s',
        $name, $r->{acknowledged}, $r->{lost}, $r->{recovered}, $d_dup, $d_received,
        $r->{min_received}, $r->{max_received}, $faults, $inv ? 'ok' : 'BROKEN');
    diag($line);
    push @lines, $line;
}

scenario('sigterm', 2, sub { kill('TERM', consumer_pids($node)) });
scenario('sigkill', 15, sub { my @p = consumer_pids($node); kill('KILL', $p[0]) if @p });
scenario('redis-kill', 20, sub { stop_redis($redis, 'KILL'); start_redis($redis) });
scenario('pg-immediate', 30, sub { $node->stop('immediate'); $node->start });
scenario('reply-lost', 10, sub { cut_proxy($proxy) });
# a consumer exits right after a COMMIT, before its acknowledgement: the
# batch comes back and must be recognised by its token, not counted again.
# The crash point is set before the stream starts (set after, a short stream
# could be drained before the consumers read the new setting), and reset
# once a consumer has exited there.
my $crash_offset = -s $node->logfile;
$node->safe_psql('postgres', "ALTER SYSTEM SET aggr.test_crash_point = 'after_commit'; SELECT pg_reload_conf()");
scenario('after-commit', 10, sub {
    ok(wait_for(sub { slurp_file($node->logfile, $crash_offset) =~ /exiting at test crash point/ }, 30),
        'after-commit: a consumer exited between COMMIT and acknowledgement');
    $node->safe_psql('postgres', 'ALTER SYSTEM RESET aggr.test_crash_point; SELECT pg_reload_conf()');
});

# Control: a consumer that pops destructively (BLPOP, as the replaced service
# and Logstash's redis input do) loses the element whose reply is lost; the
# same check reports it.
{
    my $dir = PostgreSQL::Test::Utils::tempdir('control');
    my $event = '{"topic": "control", "event_id": "c1", "timestamp": 0, "source": "faults-control"}';
    open(my $fh, '>', "$dir/ledger.tsv") or die;
    print $fh "control\tc1\tacked\n";
    close $fh;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $proxy->{port}, Proto => 'tcp')
      or die "control: $!";
    print $s join('', "*3\r\n", map { '$' . length($_) . "\r\n$_\r\n" } 'BLPOP', 'aggr:control:q', '30');
    usleep(200_000);
    cut_proxy($proxy);
    usleep(200_000);
    redis_cmd($redis, 'RPUSH', 'aggr:control:q', $event);    # acknowledged by Redis
    ok(wait_for(sub { redis_cmd($redis, 'LLEN', 'aggr:control:q') == 0 }, 10),
        'control: the naive consumer popped the element');
    my $got = IO::Select->new($s)->can_read(2) ? 'a reply' : 'nothing';
    is($got, 'nothing', 'control: its reply was lost in transit');
    close $s;
    my $r = check_ledger($node, 'faults-control', "$dir/ledger.tsv");
    is($r->{lost}, 1, 'control: the check reports the lost event');
    my $line = sprintf('control (destructive pop): acknowledged %d, lost %d', $r->{acknowledged}, $r->{lost});
    diag($line);
    push @lines, $line;
}

diag("fault suite ($events events per scenario, " . ($full ? 'full' : 'short') . "):\n" . join("\n", @lines));
stop_sidecar($sidecar);
$node->stop;
stop_redis($redis);
kill('KILL', $proxy->{pid});
done_testing();
