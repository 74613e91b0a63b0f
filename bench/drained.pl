#!/usr/bin/perl
# drained.pl PORT KEY [PID...]: returns once Redis at PORT holds nothing under
# KEY (the list and its processing lists), polling every 10 ms over one
# connection (a redis-cli per poll cost the drain it measured a fifth of a
# core); every 100 ms sums the RssAnon of the PIDs (the consumers' private
# memory) and at the end prints the largest sum seen, in kB.
use strict;
use warnings;

use IO::Socket::INET;
use Time::HiRes qw(usleep);

my ($port, $key, @pids) = @ARGV;
my $redis = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp')
  or die "drained.pl: connect to Redis: $!\n";
my $script = "return redis.call('LLEN', KEYS[1]) + #redis.call('KEYS', KEYS[1] .. ':processing:*')";
my $eval = join('', map { '$' . length($_) . "\r\n$_\r\n" } 'EVAL', $script, '1', $key);
$eval = "*4\r\n$eval";

sub private_kb
{
    my $total = 0;
    for my $pid (@pids)
    {
        open(my $fh, '<', "/proc/$pid/status") or next;
        while (<$fh>) { $total += $1 if /^RssAnon:\s+(\d+)/ }
    }
    return $total;
}

my ($peak, $polls) = (0, 0);
while (1)
{
    if ($polls++ % 10 == 0)
    {
        my $kb = private_kb();
        $peak = $kb if $kb > $peak;
    }
    print $redis $eval;
    my $reply = <$redis>;
    die "drained.pl: Redis closed the connection\n" unless defined $reply;
    die "drained.pl: Redis answered $reply" unless $reply =~ /^:(\d+)/;
    last if $1 == 0;
    usleep(10_000);
}
print "$peak\n";
