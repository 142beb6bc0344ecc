#!/usr/bin/perl
# Checks the DKIM signatures of the message on standard input with Mail::DKIM, a verifier
# written apart from ours, asking only the DNS server on 127.0.0.1 at the port given.
# Prints one line per signature: RESULT DOMAIN SELECTOR ALGORITHM (DETAIL).
use strict;
use warnings;
use Mail::DKIM::Verifier;
use Net::DNS::Resolver;

my $port = shift or die "usage: $0 DNS-PORT < message\n";
Mail::DKIM::DNS::resolver(
    Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $port, recurse => 1));
my $verifier = Mail::DKIM::Verifier->new();
binmode STDIN;
while (my $line = <STDIN>) {
    $line =~ s/\015?\012\z/\015\012/;
    $verifier->PRINT($line);
}
$verifier->CLOSE;
foreach my $signature ($verifier->signatures) {
    printf "%s %s %s %s (%s)\n", $signature->result, $signature->domain, $signature->selector,
        $signature->algorithm, $signature->result_detail;
}
