# SidecarTest.pm: what the sidecar TAP tests add to AggrTest.pm: the real
# aggr-sidecar binary on a free loopback port (optionally under valgrind), and
# a raw-socket HTTP client that can send any bytes, so that hostile requests
# reach the server exactly as written.

package SidecarTest;

use strict;
use warnings;

use Cwd qw(abs_path);
use Exporter 'import';
use File::Basename qw(dirname);
use IO::Select;
use IO::Socket::INET;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);

use AggrTest qw(new_node start_redis stop_redis spawn check_invariants);

our @EXPORT_OK = qw(new_node start_redis stop_redis check_invariants
  start_sidecar stop_sidecar http raw converse trickle json rss_kb wait_healthz);

my $repo = abs_path(dirname(__FILE__) . '/..');

# (AggrTest kills every process spawn() started when a test exits or dies.)

sub wait_port
{
    my ($port, $pid, $seconds) = @_;
    my $deadline = time() + $seconds;
    while (time() < $deadline)
    {
        return 1
          if IO::Socket::INET->new(
            PeerAddr => '127.0.0.1',
            PeerPort => $port,
            Proto    => 'tcp');
        return 0 if waitpid($pid, WNOHANG) == $pid;
        usleep(50_000);
    }
    return 0;
}

# Start aggr-sidecar against $node.  %o: args => [...], env => {...},
# listen_env => 'PORT' or 'LISTEN_ADDR' (say where to listen through the
# environment, not --listen), valgrind => 1 (then it runs under memcheck and
# stop_sidecar reports valgrind's verdict in the exit status).
sub start_sidecar
{
    my ($node, %o) = @_;
    my $bin = $ENV{AGGR_SIDECAR} || "$repo/sidecar/aggr-sidecar";
    my $port = PostgreSQL::Test::Cluster::get_free_port();
    my $log = $node->basedir . "/sidecar_$port.log";
    my %env = %{ $o{env} || {} };
    my @listen = ("--listen=127.0.0.1:$port");
    if ($o{listen_env})
    {
        $env{ $o{listen_env} } =
          $o{listen_env} eq 'PORT' ? $port : "127.0.0.1:$port";
        @listen = ();
    }
    my @cmd = ($bin, @listen, '--db=' . $node->connstr('postgres'),
        @{ $o{args} || [] });
    if ($o{valgrind})
    {
        unshift @cmd, 'valgrind', '--quiet', '--error-exitcode=1',
          '--leak-check=full', '--errors-for-leak-kinds=definite,possible',
          '--track-fds=no', "--log-file=$log.valgrind";
    }
    local %ENV = (%ENV, %env);
    my $pid = spawn($log, @cmd);
    wait_port($port, $pid, $o{valgrind} ? 60 : 15)
      or die "sidecar did not start:\n" . slurp_file($log);
    return { pid => $pid, port => $port, log => $log };
}

# SIGTERM, then wait; returns the exit status (or -1 on a signal/timeout).
sub stop_sidecar
{
    my ($sc, $seconds) = @_;
    kill 'TERM', $sc->{pid};
    my $deadline = time() + ($seconds || 30);
    while (time() < $deadline)
    {
        if (waitpid($sc->{pid}, WNOHANG) == $sc->{pid})
        {
            return -1 if $? & 127;
            return $? >> 8;
        }
        usleep(50_000);
    }
    kill 'KILL', $sc->{pid};
    waitpid($sc->{pid}, 0);
    return -1;
}

# Send bytes, read the answer until the server closes or its body is in.
# Returns { status, headers => {lowercase name => value}, body, raw }.
sub raw
{
    my ($port, $bytes, %o) = @_;
    return (converse([ { port => $port, bytes => $bytes } ], %o))[0];
}

# Many raw connections at once, so that slow and hostile clients overlap as
# they do in the wild.  A conversation is { port, bytes } or { port, send =>
# [[delay, bytes], ...] }, each delay in seconds after the previous step was
# due.  At most $o{window} are open at a time (default: all); $o{tick}, when
# given, is called every $o{tick_every} seconds (default 0.25) meanwhile.  A
# conversation ends when its answer is in, when the server closes, or
# $o{timeout} seconds (default 20) after its last byte went out.  Returns one
# answer per conversation, in order, as raw() does, plus closed (the server
# closed before a complete answer), idle (seconds from the last byte sent to
# the end) and error.
sub converse
{
    my ($convs, %o) = @_;
    my $window  = $o{window}  || scalar @$convs;
    my $timeout = $o{timeout} || 20;
    my $every   = $o{tick_every} || 0.25;
    my $next_tick = time() + $every;
    my @queue = (0 .. $#$convs);
    my (@answers, %open);    # %open: fileno => state of a conversation
    local $SIG{PIPE} = 'IGNORE';

    my $finish = sub {
        my ($st, $closed, $error) = @_;
        my $r = parse_response($st->{in})
          || { status => 0, headers => {}, body => '' };
        $r->{raw}    = $st->{in};
        $r->{closed} = $closed;
        $r->{idle}   = time() - ($st->{last_sent} // time());
        $r->{error}  = $error if $error;
        $r->{error} //= 'no answer' unless $r->{status};
        $answers[ $st->{i} ] = $r;
        delete $open{ fileno $st->{sock} };
        close $st->{sock};
    };

    while (@queue || %open)
    {
        while (@queue && keys %open < $window)
        {
            my $i = shift @queue;
            my $c = $convs->[$i];
            my $s = IO::Socket::INET->new(
                PeerAddr => '127.0.0.1',
                PeerPort => $c->{port},
                Proto    => 'tcp',
                Timeout  => 5);
            if (!$s)
            {
                $answers[$i] = { status => 0, headers => {}, body => '',
                    raw => '', error => "connect: $!" };
                next;
            }
            binmode $s;
            $s->blocking(0);
            my @steps = @{ $c->{send} || [ [ 0, $c->{bytes} ] ] };
            $open{ fileno $s } = { i => $i, sock => $s, steps => \@steps,
                due => time() + $steps[0][0], in => '', out => '' };
        }

        # bytes that are due go out; wake up for the next due step
        my ($rd, $wr) = (IO::Select->new, IO::Select->new);
        my $now  = time();
        my $wake = $now + 0.05;
        for my $st (values %open)
        {
            my $steps = $st->{steps};
            while (@$steps && $st->{due} <= $now)
            {
                $st->{out} .= (shift @$steps)->[1];
                $st->{due} += $steps->[0][0] if @$steps;
            }
            $wake = $st->{due} if @$steps && $st->{due} < $wake;
            $st->{last_sent} //= $now unless @$steps || length $st->{out};
            $rd->add($st->{sock});
            $wr->add($st->{sock}) if length $st->{out};
        }
        my ($readable, $writable) =
          IO::Select->select($rd, $wr, undef, $wake > $now ? $wake - $now : 0);
        for my $s (@{ $writable || [] })
        {
            my $st = $open{ fileno $s } or next;
            my $n = syswrite($s, $st->{out});
            if (defined $n)
            {
                substr($st->{out}, 0, $n, '');
            }
            elsif (!$!{EAGAIN})
            {
                # the server closed early: stop sending, read its answer
                @{ $st->{steps} } = ();
                $st->{out} = '';
            }
        }
        for my $s (@{ $readable || [] })
        {
            my $st = $open{ fileno $s } or next;
            my $n = sysread($s, my $chunk, 65536);
            if ($n)
            {
                $st->{in} .= $chunk;
                my $r = parse_response($st->{in});
                $finish->($st, 0) if $r && $r->{complete};
            }
            elsif (defined $n || !$!{EAGAIN})
            {
                $finish->($st, 1);
            }
        }
        for my $st (values %open)
        {
            $finish->($st, 0, 'client gave up waiting')
              if defined $st->{last_sent}
              && time() > $st->{last_sent} + $timeout;
        }
        if ($o{tick} && time() >= $next_tick)
        {
            $o{tick}->();
            $next_tick = time() + $every;
        }
    }
    return @answers;
}

# a slow client for converse(): $bytes in $n pieces, $gap seconds apart
sub trickle
{
    my ($bytes, $n, $gap) = @_;
    my $size = int((length($bytes) + $n - 1) / $n);
    my @steps;
    for (my $off = 0; $off < length $bytes; $off += $size)
    {
        push @steps, [ @steps ? $gap : 0, substr($bytes, $off, $size) ];
    }
    return \@steps;
}

sub parse_response
{
    my ($in) = @_;
    # skip interim answers (100 Continue)
    1 while $in =~ s{^HTTP/1\.[01] 1\d\d [^\r\n]*\r\n(?:[^\r\n]+\r\n)*\r\n}{};
    my $end = index($in, "\r\n\r\n");
    return undef if $end < 0;
    my ($line, @lines) = split /\r\n/, substr($in, 0, $end);
    my ($status) = $line =~ m{^HTTP/1\.[01] (\d{3})} or return undef;
    my %h;
    for (@lines)
    {
        my ($k, $v) = /^([^:]+):\s*(.*)$/ or next;
        $h{ lc $k } = exists $h{ lc $k } ? "$h{lc $k}, $v" : $v;
    }
    my $body = substr($in, $end + 4);
    my $complete = defined $h{'content-length'}
      && length($body) >= $h{'content-length'};
    $body = substr($body, 0, $h{'content-length'}) if $complete;  # not what follows
    return {
        status   => $status,
        headers  => \%h,
        body     => $body,
        complete => $complete
    };
}

# http($port, 'POST', '/publish', body => ..., headers => {...})
sub http
{
    my ($port, $method, $path, %o) = @_;
    my $req = "$method $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n";
    my %h = %{ $o{headers} || {} };
    $req .= "$_: $h{$_}\r\n" for sort keys %h;
    $req .= 'Content-Length: ' . length($o{body}) . "\r\n" if defined $o{body};
    $req .= "\r\n" . ($o{body} // '');
    return raw($port, $req, %o);
}

# the body as Perl data, or undef when it is not JSON
sub json
{
    my ($r) = @_;
    return eval { JSON::PP->new->utf8->allow_nonref->decode($r->{body}) };
}

sub rss_kb
{
    my ($pid) = @_;
    open(my $fh, '<', "/proc/$pid/status") or return 0;
    while (my $line = <$fh>)
    {
        return $1 if $line =~ /^VmRSS:\s+(\d+)/;
    }
    return 0;
}

# poll /healthz until it answers $want (default 200)
sub wait_healthz
{
    my ($port, $want, $seconds) = @_;
    $want ||= 200;
    my $deadline = time() + ($seconds || 60);
    my $r;
    while (time() < $deadline)
    {
        $r = http($port, 'GET', '/healthz', timeout => 5);
        return $r if $r->{status} == $want;
        usleep(100_000);
    }
    return $r;
}

1;
