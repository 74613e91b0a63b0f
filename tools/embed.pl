#!/usr/bin/perl
# embed.pl NAME FILE [NAME FILE ...] > OUT.c: each FILE's bytes as the C array
# NAME[] (with a NUL after them) and its length as NAME_len, so a document or
# script kept in the tree as itself (openapi.json, extension/lua/*.lua) is
# compiled in.
use strict;
use warnings;

die "usage: embed.pl NAME FILE [NAME FILE ...] > OUT.c\n" if !@ARGV || @ARGV % 2;
print "/* made by tools/embed.pl; do not edit */\n#include <stddef.h>\n";
while (my ($name, $file) = splice(@ARGV, 0, 2))
{
    open(my $fh, '<:raw', $file) or die "$file: $!\n";
    local $/;
    my @bytes = unpack('C*', <$fh> // '');
    close $fh;
    print "\nconst char $name\[] = {\n";
    for (my $i = 0; $i < @bytes; $i += 16)
    {
        my $end = $i + 15 < $#bytes ? $i + 15 : $#bytes;
        print "\t", join(', ', @bytes[ $i .. $end ]), ",\n";
    }
    print "\t0\n};\nconst size_t ${name}_len = ", scalar(@bytes), ";\n";
}
