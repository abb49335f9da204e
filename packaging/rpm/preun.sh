# as2box (RPM %preun): stop the services when the package is erased ($1 = 0), not on upgrade.
if [ "$1" -eq 0 ]; then
    /usr/lib/as2box/stop
fi
