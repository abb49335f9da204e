# as2box (RPM %post): accounts, folders, store, sshd config, units. $1: 1 install, 2+ upgrade.
if [ "$1" -ge 2 ]; then
    /usr/lib/as2box/configure upgrade
else
    /usr/lib/as2box/configure install
fi
