#!/usr/bin/perl
# embed.pl NAME < FILE > FILE.c: FILE's bytes as the C array NAME[] (with a
# NUL after them) and its length as NAME_len, so a document kept in the tree
# as itself (openapi.json) is compiled into the program.
use strict;
use warnings;

my $name = shift or die "usage: embed.pl NAME < FILE > FILE.c\n";
binmode STDIN;
local $/;
my $data = <STDIN>;
my @bytes = unpack('C*', $data);
print "/* made by embed.pl; do not edit */\n#include <stddef.h>\n\n";
print "const char $name\[] = {\n";
for (my $i = 0; $i < @bytes; $i += 16)
{
    my $end = $i + 15 < $#bytes ? $i + 15 : $#bytes;
    print "\t", join(', ', @bytes[ $i .. $end ]), ",\n";
}
print "\t0\n};\nconst size_t ${name}_len = ", scalar(@bytes), ";\n";
