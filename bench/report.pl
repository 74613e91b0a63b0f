#!/usr/bin/perl
# report.pl: bench/out/results.csv -> a Markdown table on stdout, and with
# --dat FILE a table for gnuplot (one row per workload, one column per size).
use strict;
use warnings;
use Getopt::Long;

my $dat;
GetOptions('dat=s' => \$dat) or die "usage: report.pl [--dat FILE] results.csv\n";
my @rows = map { chomp; [ split /,/, $_, -1 ] } <>;
shift @rows;
my %what = (
    raw     => 'raw SQL ceiling: INSERT ... SELECT jsonb_to_recordset ON CONFLICT DO NOTHING, by hand, into a table with only the primary key',
    raw_same_indexes => 'the same into a copy of aggr.events (same indexes)',
    ingest  => 'SELECT aggr_ingest(batch)',
    http    => 'HTTP POST /publish, direct mode',
    http_ndjson_gzip => 'HTTP POST /publish, direct mode, gzip NDJSON bodies',
    drain   => 'consumers draining a pre-filled Redis queue',
    publish => 'HTTP POST /publish, broker mode, until drained',
    stream_none => 'SELECT aggr_ingest(batch), sidecar running, no stream subscriber',
    stream_200 => 'the same with 200 GET /events/stream subscribers reading (p50/p99: commit to subscriber)',
    stream_idle_1000 => 'aggr-sidecar with 1,000 idle GET /events/stream subscribers (RSS)',
    retention_off  => 'SELECT aggr_ingest(batch), aggr preloaded, retention off',
    retention_tomb => 'the same while the expiry worker expires them (aggr.retention = 1s, tombstones kept)',
    retention_tomb_ff80 => 'the same with aggr.events at fillfactor 80 (expiry as HOT updates)',
    retention_del  => 'the same, deleting at expiry (aggr.dedup_window = 0)',
    retention_off_1client  => 'SELECT aggr_ingest(batch) by 1 client, retention off',
    retention_tomb_1client => 'the same while the expiry worker expires them (tombstones kept)',
);
print "| workload | events | events/s | × raw | p50 ms | p99 ms | peak RSS |\n";
print "|---|---:|---:|---:|---:|---:|---:|\n";
for my $r (@rows)
{
    my ($w, $n, $rate, $ratio, $p50, $p99, $rss) = @$r;
    ($n, $ratio) = ('', '') if $n eq '0';    # a memory figure, not a run of events
    printf "| %s | %s | %s | %s | %s | %s | %s |\n", $what{$w} // $w, $n, $rate, $ratio,
      $p50 eq '' ? '' : sprintf('%.1f', $p50), $p99 eq '' ? '' : sprintf('%.1f', $p99),
      $rss eq '' ? '' : sprintf('%.1f MB', $rss / 1024);
}

exit 0 unless $dat;
my (@workloads, @sizes, %rate, %seen_w, %seen_s);
for my $r (@rows)
{
    my ($w, $n, $rate) = @$r;
    next if $n eq '0';
    push @workloads, $w unless $seen_w{$w}++;
    push @sizes, $n unless $seen_s{$n}++;
    $rate{$w}{$n} = $rate;
}
open(my $fh, '>', $dat) or die "$dat: $!";
print $fh join(' ', 'workload', map { "\"$_ events\"" } @sizes), "\n";
for my $w (@workloads)
{
    print $fh join(' ', $w, map { $rate{$w}{$_} // '-' } @sizes), "\n";
}
close $fh;
