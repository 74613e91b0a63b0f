# AggrTest.pm: what aggr's TAP tests share.  A PostgreSQL node with aggr
# preloaded and installed, a real redis-server on a free loopback port
# (appendonly, fsync always) that can be killed and restarted on the same data,
# event generators, and the invariants of DESIGN.md as one check.

package AggrTest;

use strict;
use warnings;

use Exporter 'import';
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

our @EXPORT_OK = qw(new_node start_redis stop_redis redis_cmd demo_events
  event_batches check_invariants wait_for stats poll_stats_until spawn
  publish wait_drained consumer_pids start_proxy cut_proxy check_ledger);

# A started node with aggr preloaded and CREATE EXTENSION aggr done in
# database postgres; %conf are extra postgresql.conf settings
# (shared_preload_libraries => '' makes a stock server).
sub new_node
{
    my ($name, %conf) = @_;
    my $node = PostgreSQL::Test::Cluster->new($name);
    $node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
    %conf = (shared_preload_libraries => 'aggr', %conf);
    $node->append_conf('postgresql.conf',
        join('',
            "log_min_messages = 'log'\n",
            map { "$_ = '$conf{$_}'\n" } sort keys %conf));
    $node->start;
    $node->safe_psql('postgres', 'CREATE EXTENSION aggr');
    return $node;
}

my $parent = $$;
my %children;    # pid => 1 for every process started here and still running

# a test that dies leaves no server or helper process behind
END
{
    local $?;    # waitpid below must not become the test's exit status
    if ($$ == $parent)
    {
        my @pids = grep { kill(0, $_) } keys %children;
        kill('KILL', @pids);
        waitpid($_, 0) for @pids;
    }
}

# Runs a program in the background, output appended to $log; returns its pid.
sub spawn
{
    my ($log, @cmd) = @_;
    my $pid = fork();
    die "fork: $!" unless defined $pid;
    $children{$pid} = 1 if $pid;
    if ($pid == 0)
    {
        open(STDIN, '<', '/dev/null');
        open(STDOUT, '>>', $log) or POSIX::_exit(127);
        open(STDERR, '>&', \*STDOUT);
        exec(@cmd) or POSIX::_exit(127);
    }
    return $pid;
}

# Polls $cond (a sub) until it is true or $seconds pass; returns its value.
sub wait_for
{
    my ($cond, $seconds) = @_;
    my $deadline = time() + ($seconds // 60);
    while (time() < $deadline)
    {
        my $v = $cond->();
        return $v if $v;
        usleep(100_000);
    }
    return $cond->();
}

# Starts redis-server with persistence that survives SIGKILL (appendonly,
# appendfsync always); @args are more options of redis-server (later ones
# win).  Pass the returned handle to start_redis again to restart it on the
# same port, data and options.
sub start_redis
{
    my ($r, @args) = @_;
    @args = @{ $r->{args} } if $r && !@args;
    $r //= {
        port => PostgreSQL::Test::Cluster::get_free_port(),
        dir  => PostgreSQL::Test::Utils::tempdir('redis'),
    };
    $r->{pid} = spawn(
        "$r->{dir}/redis.log", 'redis-server',
        '--port', $r->{port}, '--bind', '127.0.0.1',
        '--dir', $r->{dir}, '--appendonly', 'yes',
        '--appendfsync', 'always', '--save', '',
        '--daemonize', 'no', '--protected-mode', 'no', @args);
    $r->{args} = \@args;
    wait_for(sub { (redis_cmd($r, 'PING') // '') eq 'PONG' }, 20)
      or die "redis-server did not start on port $r->{port}";
    $r->{url} = "redis://127.0.0.1:$r->{port}/0";
    return $r;
}

sub stop_redis
{
    my ($r, $signal) = @_;
    return unless $r->{pid};
    kill($signal // 'TERM', $r->{pid});
    waitpid($r->{pid}, 0);
    delete $children{ $r->{pid} };
    delete $r->{pid};
}

# One Redis command over a raw socket (RESP); returns the reply as a Perl
# scalar or array ref, undef when Redis cannot be reached.
sub redis_cmd
{
    my ($r, @args) = @_;
    my $s = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1',
        PeerPort => $r->{port},
        Proto    => 'tcp',
        Timeout  => 5) or return undef;
    my $req = '*' . scalar(@args) . "\r\n";
    $req .= '$' . length($_) . "\r\n$_\r\n" for @args;
    print $s $req;
    my $reply = read_resp($s);
    close $s;
    return $reply;
}

sub read_resp
{
    my ($s) = @_;
    my $line = <$s>;
    return undef unless defined $line;
    $line =~ s/\r\n$//;
    my ($type, $rest) = (substr($line, 0, 1), substr($line, 1));
    return $rest if $type eq '+' || $type eq ':';
    return "ERR $rest" if $type eq '-';
    if ($type eq '$')
    {
        return undef if $rest < 0;
        my $buf = '';
        read($s, $buf, $rest + 2);
        return substr($buf, 0, $rest);
    }
    if ($type eq '*')
    {
        return undef if $rest < 0;
        return [ map { read_resp($s) } 1 .. $rest ];
    }
    die "bad RESP line: $line";
}

# The demo's events: $n events of which round($n * $dup) re-send an earlier
# one (byte-identical), shuffled with a fixed seed so runs are repeatable.
# Returns a list of JSON texts.
sub demo_events
{
    my ($n, $dup, $prefix) = @_;
    $prefix //= 'e';
    my $dups   = int($n * $dup + 0.5);
    my $unique = $n - $dups;
    my @events = map {
        JSON::PP->new->canonical->encode(
            {
                topic     => 'topic_' . ($_ % 10),
                event_id  => "$prefix$_",
                timestamp => '2025-10-24T00:00:00Z',
                source    => 'tap',
                payload   => { n => $_ }
            })
    } 1 .. $unique;
    srand(42);
    push @events, $events[ int(rand($unique)) ] for 1 .. $dups;
    for (my $i = $#events; $i > 0; $i--)
    {
        my $j = int(rand($i + 1));
        @events[ $i, $j ] = @events[ $j, $i ];
    }
    return @events;
}

# Splits events into JSON array texts of $size.
sub event_batches
{
    my ($size, @events) = @_;
    my @batches;
    push @batches, '[' . join(',', splice(@events, 0, $size)) . ']' while @events;
    return @batches;
}

# aggr_stats(), waiting out a server that is restarting or recovering.
sub stats
{
    my ($node) = @_;
    my $out;
    wait_for(sub { $node->psql('postgres', 'SELECT aggr_stats()', stdout => \$out) == 0 }, 120)
      or die 'aggr_stats() did not answer: the server stayed down';
    return decode_json($out);
}

# Polls aggr_stats() until $cond->($stats) holds; returns the last stats.
sub poll_stats_until
{
    my ($node, $cond, $seconds) = @_;
    my $last;
    wait_for(sub { $last = stats($node); $cond->($last) }, $seconds // 120);
    return $last;
}

# aggr_publish() of one batch, retried while the failure is one a publisher
# should retry (queue full, broker or server down or restarting) for up to
# $seconds.  Dies on any other error.  Returns the answer.
sub publish
{
    my ($node, $batch, $seconds) = @_;
    my $deadline = time() + ($seconds // 90);
    my $sql = "\\set VERBOSITY verbose\nSELECT aggr_publish(\$aggr\$$batch\$aggr\$);";
    for (my $try = 0;; $try++)
    {
        my ($out, $err) = ('', '');
        my $ret = $node->psql('postgres', $sql, stdout => \$out, stderr => \$err);
        return $out if $ret == 0;
        die "publish failed for good: $err"
          if $err =~ /ERROR:\s+(22|54)/ || time() > $deadline;
        usleep(50_000 * ($try < 10 ? $try + 1 : 10));
    }
}

# Waits until the queue and every processing list are empty.
sub wait_drained
{
    my ($node, $r, $seconds) = @_;
    return wait_for(
        sub {
            my $len  = redis_cmd($r, 'LLEN', 'aggregator:events');
            my $keys = redis_cmd($r, 'KEYS', 'aggregator:events:processing:*');
            my $batches = redis_cmd($r, 'KEYS', 'aggregator:events:batch:*');
            defined($len) && $len == 0 && ref($keys) && !@$keys && ref($batches) && !@$batches;
        },
        $seconds // 120);
}

# Pids of the running consumers; none while the server is down.
sub consumer_pids
{
    my ($node) = @_;
    my $pids = '';
    $node->psql('postgres',
        "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE backend_type = 'aggr consumer'",
        stdout => \$pids);
    return split(' ', $pids // '');
}

# A TCP proxy in front of Redis that can lose replies in transit: after
# cut_proxy, what Redis sends on the connections open at that moment is
# dropped (the commands still run), so a client waiting in BLMOVE/BLPOP never
# hears that it got an element.  New connections work normally.
sub start_proxy
{
    my ($target_port) = @_;
    my $ls = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1',
        LocalPort => 0,
        Listen    => 128,
        ReuseAddr => 1) or die "proxy listen: $!";
    my $port = $ls->sockport;
    my $pid  = fork();
    die "fork: $!" unless defined $pid;
    if ($pid == 0)
    {
        my $cut = 0;
        local $SIG{USR1} = sub { $cut = 1 };
        local $SIG{PIPE} = 'IGNORE';
        my $sel = IO::Select->new($ls);
        my (%peer, %upstream, %lost);
        my $close = sub {
            my ($s) = @_;
            my $o = delete $peer{ fileno($s) } or return;
            delete $peer{ fileno($o) };
            delete @upstream{ fileno($s), fileno($o) };
            delete @lost{ fileno($s), fileno($o) };
            $sel->remove($s, $o);
            close $s;
            close $o;
        };
        while (1)
        {
            if ($cut)
            {
                $cut = 0;
                $lost{$_} = 1 for keys %upstream;
            }
            for my $s ($sel->can_read(0.2))
            {
                if ($s == $ls)
                {
                    my $c = $ls->accept or next;
                    my $u = IO::Socket::INET->new(
                        PeerAddr => '127.0.0.1',
                        PeerPort => $target_port,
                        Proto    => 'tcp');
                    if (!$u) { close $c; next; }
                    $peer{ fileno($c) } = $u;
                    $peer{ fileno($u) } = $c;
                    $upstream{ fileno($u) } = 1;
                    $sel->add($c, $u);
                    next;
                }
                next unless $peer{ fileno($s) };
                my $n = sysread($s, my $buf, 65536);
                if (!$n) { $close->($s); next; }
                next if $lost{ fileno($s) };
                my $o = $peer{ fileno($s) };
                for (my $off = 0; $off < length $buf;)
                {
                    my $w = syswrite($o, $buf, length($buf) - $off, $off);
                    if (!$w) { $close->($s); last; }
                    $off += $w;
                }
            }
        }
    }
    close $ls;
    $children{$pid} = 1;
    return { pid => $pid, port => $port };
}

sub cut_proxy { my ($p) = @_; kill('USR1', $p->{pid}); }

# The checker of the fault suite.  Ledgers (aggr-publisher --ledger: topic TAB
# event_id TAB acked|failed|unknown) against the rows of one source:
# acknowledged, lost (acked but absent: must be 0), recovered (unknown outcome
# but present), unexpected (present but never sent: must be 0).
sub check_ledger
{
    my ($node, $source, @ledgers) = @_;
    my %sent;
    # the bounds of what the server may have received: each event of an
    # acknowledged request once, plus once per attempt that may have been
    # applied too (its answer was lost)
    my ($min_received, $max_received) = (0, 0);
    for my $file (@ledgers)
    {
        open(my $fh, '<', $file) or die "$file: $!";
        while (<$fh>)
        {
            chomp;
            my ($topic, $id, $outcome, $maybe) = split /\t/;
            my $acked = $outcome eq 'acked' ? 1 : 0;
            $min_received += $acked;
            $max_received += $acked + ($maybe // 0);
            my $key = "$topic\t$id";
            # a key re-sent in several requests: acked if any was
            $sent{$key} = $outcome
              unless ($sent{$key} // '') eq 'acked';
        }
    }
    my %present = map { $_ => 1 } split /\n/,
      $node->safe_psql('postgres',
        "SELECT topic || E'\\t' || event_id FROM aggr.events WHERE source = '$source'");
    my %r = (acknowledged => 0, lost => 0, recovered => 0, unexpected => 0,
        min_received => $min_received, max_received => $max_received);
    for my $key (keys %sent)
    {
        if ($sent{$key} eq 'acked')
        {
            $r{acknowledged}++;
            $r{lost}++ unless $present{$key};
        }
        elsif ($present{$key})
        {
            $r{recovered}++;
        }
    }
    $r{unexpected} = grep { !exists $sent{$_} } keys %present;
    $r{present} = scalar keys %present;
    return \%r;
}

# DESIGN.md invariants 1 and 2, plus the exact numbers a test expects
# (%expect: received, unique, duplicates, expired; any may be left out).
# With retention, unique_processed = live events + expired, overall and per
# topic (tombstones of expired events are not events).
sub check_invariants
{
    my ($node, $name, %expect) = @_;
    stats($node);    # waits out a server that is still starting
    # one snapshot for the stats and the rows: expiry may be running
    my ($json, $rows, $off_topics) = split(/\n/, $node->safe_psql('postgres', q{
        BEGIN ISOLATION LEVEL REPEATABLE READ;
        SELECT aggr_stats();
        SELECT count(*) FROM aggr.events WHERE expired_at IS NULL;
        -- the topics whose count in aggr_stats() is not their live rows + expired
        SELECT count(*) FROM
            (SELECT t ->> 'topic' AS topic, (t ->> 'count')::bigint - (t ->> 'expired')::bigint AS n
               FROM jsonb_array_elements(aggr_stats() -> 'topics') t) s
            FULL JOIN (SELECT topic, count(*) AS n FROM aggr.events
                       WHERE expired_at IS NULL GROUP BY topic) r USING (topic)
          WHERE coalesce(s.n, 0) IS DISTINCT FROM coalesce(r.n, 0);
        COMMIT;}));
    my $s = decode_json($json);
    is($s->{unique_processed}, $rows + $s->{expired}, "$name: unique_processed = count(*) + expired");
    is($off_topics, 0, "$name: each topic's count = its rows + its expired");
    is($s->{received}, $s->{unique_processed} + $s->{duplicate_dropped},
        "$name: received = unique + duplicates");
    is($s->{received}, $expect{received}, "$name: received")
      if defined $expect{received};
    is($s->{unique_processed}, $expect{unique}, "$name: unique_processed")
      if defined $expect{unique};
    is($s->{duplicate_dropped}, $expect{duplicates}, "$name: duplicate_dropped")
      if defined $expect{duplicates};
    is($s->{expired}, $expect{expired}, "$name: expired")
      if defined $expect{expired};
    return $s;
}

1;
