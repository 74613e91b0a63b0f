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
  start_sidecar stop_sidecar http raw json rss_kb wait_healthz);

my $repo = abs_path(dirname(__FILE__) . '/..');
my %running;    # pid => 1 for every sidecar started and not yet stopped

# a test that dies leaves no sidecar behind
END
{
    kill 'KILL', keys %running;
    waitpid($_, 0) for keys %running;
}

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
    $running{$pid} = 1;
    wait_port($port, $pid, $o{valgrind} ? 60 : 15)
      or die "sidecar did not start:\n" . slurp_file($log);
    return { pid => $pid, port => $port, log => $log };
}

# SIGTERM, then wait; returns the exit status (or -1 on a signal/timeout).
sub stop_sidecar
{
    my ($sc, $seconds) = @_;
    kill 'TERM', $sc->{pid};
    delete $running{ $sc->{pid} };
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
    my $timeout = $o{timeout} || 20;
    my $s = IO::Socket::INET->new(
        PeerAddr => '127.0.0.1',
        PeerPort => $port,
        Proto    => 'tcp',
        Timeout  => 5) or return { status => 0, error => "connect: $!" };
    binmode $s;
    local $SIG{PIPE} = 'IGNORE';
    my $off = 0;
    while ($off < length $bytes)
    {
        my $n = syswrite($s, $bytes, 65536, $off);
        last unless defined $n && $n > 0;    # server closed early: read it
        $off += $n;
    }
    my $sel = IO::Select->new($s);
    my $in = '';
    my $deadline = time() + $timeout;
    while (time() < $deadline)
    {
        last unless $sel->can_read($deadline - time());
        my $n = sysread($s, my $chunk, 65536);
        last unless $n;
        $in .= $chunk;
        my $r = parse_response($in);
        last if $r && $r->{complete};
    }
    close $s;
    my $r = parse_response($in)
      || { status => 0, headers => {}, body => '', error => 'no answer' };
    $r->{raw} = $in;
    return $r;
}

sub parse_response
{
    my ($in) = @_;
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
    while (<$fh>)
    {
        return $1 if /^VmRSS:\s+(\d+)/;
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
