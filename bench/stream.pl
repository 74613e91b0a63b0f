#!/usr/bin/perl
# stream.pl: the event stream's side of make bench, against a running sidecar.
#
#   stream.pl subscribe PORT N SECONDS    N subscribers (subscriber i follows
#       topic_(i % 10), the bench's topics), reading and discarding until
#       SIGTERM or SECONDS; prints "ready" once all are open, then at the end
#       how many bytes they read.
#   stream.pl latency PORT PSQL... -- COUNT   one subscriber on topic probe;
#       runs COUNT single-event ingests through the psql command given (one
#       every 20 ms) and prints p50 and p99 in ms of arrival minus the
#       event's ingested_at (its transaction's start: a one-event ingest
#       commits within a fraction of a millisecond of it).
#   stream.pl idle PORT N PID       N streams that receive nothing; prints the
#       sidecar's (PID) resident kB before and with them open.
use strict;
use warnings;

use IO::Select;
use IO::Socket::INET;
use Time::HiRes qw(time usleep);
use POSIX qw(strftime);

my ($mode, $port, @args) = @ARGV;

sub open_stream
{
    my ($topic) = @_;
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp')
      or die "connect: $!";
    print $s "GET /events/stream?topic=$topic HTTP/1.0\r\nHost: x\r\n\r\n";
    return $s;
}

sub rss_kb
{
    my ($pid) = @_;
    open(my $fh, '<', "/proc/$pid/status") or return 0;
    while (<$fh>) { return $1 if /^VmRSS:\s+(\d+)/ }
    return 0;
}

# wait until each stream's answer headers are in
sub wait_open
{
    my (@socks) = @_;
    my %pending = map { (fileno($_) => $_) } @socks;
    my %buf;
    my $deadline = time() + 60;
    my $sel = IO::Select->new(@socks);
    while (%pending && time() < $deadline)
    {
        for my $s ($sel->can_read(0.5))
        {
            next unless $pending{ fileno($s) };
            sysread($s, my $chunk, 65536) or die "a stream closed while opening\n";
            $buf{ fileno($s) } .= $chunk;
            next unless $buf{ fileno($s) } =~ /\r\n\r\n/;
            die "a stream was refused: $buf{fileno($s)}\n" unless $buf{ fileno($s) } =~ m{^HTTP/1\.\d 200};
            delete $pending{ fileno($s) };
        }
    }
    die scalar(keys %pending) . " streams did not open\n" if %pending;
}

if ($mode eq 'subscribe')
{
    my ($n, $seconds) = @args;
    my @socks = map { open_stream('topic_' . ($_ % 10)) } 0 .. $n - 1;
    wait_open(@socks);
    $| = 1;
    print "ready\n";
    my $stop = 0;
    local $SIG{TERM} = sub { $stop = 1 };
    my $bytes = 0;
    my $sel = IO::Select->new(@socks);
    my $deadline = time() + $seconds;
    while (!$stop && time() < $deadline)
    {
        for my $s ($sel->can_read(0.2))
        {
            my $got = sysread($s, my $chunk, 1 << 16);
            if (!$got) { $sel->remove($s); next }
            $bytes += $got;
        }
    }
    my ($user, $system) = times();
    printf "read %d bytes, %.2f s of CPU\n", $bytes, $user + $system;
}
elsif ($mode eq 'latency')
{
    my $count = pop @args;
    pop @args if $args[-1] eq '--';
    my @psql = @args;
    my $s = open_stream('probe');
    wait_open($s);
    $s->blocking(0);
    open(my $w, '|-', @psql) or die "psql: $!";
    $w->autoflush(1);
    my (@lat, $buf);
    my $sent = 0;
    my $next = time();
    my $deadline = time() + $count * 0.02 + 30;
    while (@lat < $count && time() < $deadline)
    {
        if ($sent < $count && time() >= $next)
        {
            print $w "SELECT aggr_ingest('{\"topic\": \"probe\", \"event_id\": \"p-$$-$sent\", "
              . "\"timestamp\": 0, \"source\": \"bench\"}');\n";
            $sent++;
            $next += 0.02;
        }
        my $got = sysread($s, my $chunk, 65536);
        if ($got)
        {
            my $now = time();
            $buf .= $chunk;
            while ($buf =~ s/^(.*?)\n\n//s)
            {
                my $block = $1;
                next unless $block =~ /"ingested_at" : "([^"]+)"/;
                push @lat, ($now - ingested_epoch($1)) * 1000;
            }
        }
        else
        {
            usleep(1000);
        }
    }
    close $w;
    die "only " . scalar(@lat) . " of $count probes arrived\n" if @lat < $count;
    @lat = sort { $a <=> $b } @lat;
    printf "%.1f %.1f\n", $lat[ int(@lat * 0.5) ], $lat[ int(@lat * 0.99) ];
}
elsif ($mode eq 'idle')
{
    my ($n, $pid) = @args;
    my $before = rss_kb($pid);
    my @socks = map { open_stream('idle') } 1 .. $n;
    wait_open(@socks);
    sleep 1;
    print "$before " . rss_kb($pid) . "\n";
}
else
{
    die "usage: stream.pl subscribe|latency|idle PORT ...\n";
}

# "2026-12-01T14:25:19.83879+00:00" -> epoch seconds
sub ingested_epoch
{
    my ($ts) = @_;
    my ($y, $mo, $d, $h, $mi, $s, $frac) = $ts =~ /^(\d+)-(\d+)-(\d+)T(\d+):(\d+):(\d+)(\.\d+)?/
      or die "bad timestamp $ts\n";
    require Time::Local;
    return Time::Local::timegm($s, $mi, $h, $d, $mo - 1, $y) + ($frac // 0);
}
