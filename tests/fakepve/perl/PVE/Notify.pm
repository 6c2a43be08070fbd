package PVE::Notify;

# A stand-in for pve-cluster's PVE::Notify (src/PVE/Notify.pm) for pvepstore's tests: the same
# subroutines with the same arguments, recording each call instead of sending it.  It lives at
# <host_root>/usr/share/perl5/PVE/Notify.pm; calls go to <host_root>/var/log/pve-notify.jsonl.
# Like proxmox-notify it refuses a template it cannot find: override dir first, then the vendor's.
# The line marked COMMON-DATA is cut out to stand in for PVE < 8.4 (no common_template_data).

use strict;
use warnings;
use File::Basename qw(dirname);
use JSON::PP;

my $root = dirname(__FILE__) . '/../../../..';
my %SEVERITIES = map { $_ => 1 } qw(info notice warning error unknown);

sub _record {
    my ($call) = @_;
    open(my $fh, '>>', "$root/var/log/pve-notify.jsonl") or die "cannot record: $!\n";
    print $fh JSON::PP->new->utf8->canonical->encode($call), "\n";
    close($fh);
}

my $send_notification = sub {
    my ($severity, $template_name, $template_data, $fields, $config) = @_;
    die "invalid severity '$severity'\n" if !$SEVERITIES{$severity};
    die "template name must be a plain name\n" if $template_name !~ /^[A-Za-z0-9_-]+$/;
    die "template data must be a hash\n" if ref($template_data) ne 'HASH';
    die "metadata fields must be a hash\n" if ref($fields) ne 'HASH';
    for my $k (keys %$fields) {
        die "metadata field '$k' must be a string\n" if ref($fields->{$k});
    }
    for my $part ('subject.txt.hbs', 'body.txt.hbs') {
        my $found = grep { -f "$root/$_/$template_name-$part" }
            ('etc/pve/notification-templates/default', 'usr/share/pve-manager/templates/default');
        die "failed to render notification template, all template candidates are erroneous or missing\n"
            if !$found;
    }
    _record({ severity => $severity, template => $template_name, data => $template_data,
              fields => $fields, config => defined($config) ? 1 : 0 });
};

sub notify {
    my ($severity, $template_name, $template_data, $fields, $config) = @_;
    $send_notification->($severity, $template_name, $template_data, $fields, $config);
}

sub info { my ($t, $d, $f, $c) = @_; $send_notification->('info', $t, $d, $f, $c); }
sub notice { my ($t, $d, $f, $c) = @_; $send_notification->('notice', $t, $d, $f, $c); }
sub warning { my ($t, $d, $f, $c) = @_; $send_notification->('warning', $t, $d, $f, $c); }
sub error { my ($t, $d, $f, $c) = @_; $send_notification->('error', $t, $d, $f, $c); }

sub common_template_data { return { hostname => 'standin', fqdn => 'standin.example.org', 'cluster-name' => 'lab' }; } # COMMON-DATA

1;
