# docker-compose.yml and Dockerfile.postgres, checked without a Docker engine:
# the compose file parses as YAML (Debian's python3-yaml), has the replaced
# service's four services and volumes, every aggr.* setting it passes exists and
# takes the value it is given, and every program flag it uses is accepted; the
# image is a major make test runs, built by the make targets make test runs.
use strict;
use warnings;

use Cwd qw(abs_path);
use File::Basename qw(dirname);
use JSON::PP;
use PostgreSQL::Test::Utils;
use Test::More;
use lib 't';
use AggrTest qw(new_node);

my $repo = abs_path(dirname(__FILE__) . '/..');
my $json = `/usr/bin/python3 -c 'import json, sys, yaml; json.dump(yaml.safe_load(open(sys.argv[1])), sys.stdout)' $repo/docker-compose.yml`;
is($?, 0, 'docker-compose.yml parses as YAML');
my $compose = decode_json($json);

is_deeply([ sort keys %{ $compose->{services} } ], [qw(aggregator broker publisher storage)], 'four services');
is_deeply([ sort keys %{ $compose->{volumes} } ], [qw(pg_data redis_data)], 'named volumes');
is($compose->{services}{storage}{build}{dockerfile}, 'Dockerfile.postgres', 'storage is built from Dockerfile.postgres');
ok(-f "$repo/Dockerfile.postgres", 'Dockerfile.postgres exists');
like(join(' ', @{ $compose->{services}{broker}{command} }), qr/--appendonly yes/, 'broker is append-only');
ok($compose->{services}{$_}{healthcheck}, "$_ has a healthcheck") for qw(storage broker);

# ${VAR:-default} as compose would expand it with no environment
sub expand { my ($v) = @_; $v =~ s/\$\{\w+:-([^}]*)\}/$1/g; return $v; }

my @cmd = map { expand($_) } @{ $compose->{services}{storage}{command} };
my %settings;
for my $i (0 .. $#cmd - 1)
{
    $settings{$1} = $2 if $cmd[$i] eq '-c' && $cmd[ $i + 1 ] =~ /^([\w.]+)=(.*)$/;
}
ok(keys %settings >= 7, 'storage passes the aggr settings');
for my $var (qw(WORKER_COUNT QUEUE_MAXSIZE QUEUE_POLL_INTERVAL BROKER_URL BROKER_QUEUE_KEY))
{
    like(join(' ', @{ $compose->{services}{storage}{command} }), qr/\$\{$var:-/, "$var maps onto a setting");
}

# the image: a tested major, built the way make test builds (tools/test.sh)
my $dockerfile = slurp_file("$repo/Dockerfile.postgres");
my ($image_major) = $dockerfile =~ /^FROM postgres:(\d+)\s*$/m;
is($image_major, 18, 'the image is PostgreSQL 18, a major make test runs');
my @image_pg_config = $dockerfile =~ m{PG_CONFIG=(\S+)}g;
ok(@image_pg_config >= 2, 'the image passes PG_CONFIG to every make');
is($_, "/usr/lib/postgresql/$image_major/bin/pg_config", "the image builds against $image_major") for @image_pg_config;
like($dockerfile, qr/postgresql-server-dev-$image_major\b/, "the image installs the headers of $image_major");
sub make_targets
{
    my ($text) = @_;
    my %targets;
    for my $line (grep { !/^\s*#/ } split /\n/, $text)
    {
        # a make command starts with its options (make -C DIR ...), prose does not
        for my $call ($line =~ /\bmake\s+(-[^&|;>\n]*)/g)
        {
            my @words = grep { !/^-|=|^"|^\/|^\\$/ } split ' ', $call;
            $targets{ $words[0] // 'all' } = 1;
        }
    }
    return join(' ', sort keys %targets);
}
my ($build_tree) = slurp_file("$repo/tools/test.sh") =~ /^build_tree\(\) \{\n(.*?)^\}/ms;
ok($build_tree, 'tools/test.sh builds each major in build_tree');
is(make_targets($dockerfile), make_targets($build_tree =~ s/^.*clean.*$//mr),
    'the image runs the make targets make test runs');
my @mounts = @{ $compose->{services}{storage}{volumes} };
is_deeply(\@mounts, ['pg_data:/var/lib/postgresql'],
    'the data volume is where the 18 image keeps PGDATA (/var/lib/postgresql/18/docker)');

my $node = new_node('compose', map { $_ eq 'shared_preload_libraries' ? () : ($_ => $settings{$_}) } keys %settings);
for my $name (sort keys %settings)
{
    my $known = $node->safe_psql('postgres', "SELECT count(*) FROM pg_settings WHERE name = '$name'");
    is($known, 1, "setting $name exists");
}
is($node->safe_psql('postgres', 'SHOW aggr.worker_count'), '4', 'WORKER_COUNT default reaches aggr.worker_count');
is($node->safe_psql('postgres', 'SHOW aggr.poll_interval'), '2s', 'QUEUE_POLL_INTERVAL is seconds');
is($node->safe_psql('postgres', 'SHOW aggr.queue_maxsize'), '1000000', 'QUEUE_MAXSIZE default');
is($node->safe_psql('postgres', 'SHOW aggr.queue_key'), 'aggregator:events', 'BROKER_QUEUE_KEY default');
unlike(slurp_file($node->logfile), qr/invalid configuration parameter|unrecognized configuration parameter/,
    'no setting was refused');
$node->stop;

# the programs accept the flags compose gives them
my %programs = (
    'aggr-sidecar'   => $ENV{AGGR_SIDECAR}   // "$repo/sidecar/aggr-sidecar",
    'aggr-publisher' => $ENV{AGGR_PUBLISHER} // "$repo/publisher/aggr-publisher");
for my $svc (qw(aggregator publisher))
{
    my ($prog, @args) = @{ $compose->{services}{$svc}{command} };
    my $help = `$programs{$prog} --help 2>&1`;
    for my $flag (grep { /^--/ } @args)
    {
        like($help, qr/\Q$flag\E\b/, "$svc: $prog knows $flag");
    }
}
like(`$programs{'aggr-sidecar'} --help 2>&1`, qr/DATABASE_URL/, 'the sidecar reads DATABASE_URL');

done_testing();
