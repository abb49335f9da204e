# as2box (RPM %postun): erasing keeps /var/lib/as2box (every user's files and messages) and
# the settings; remove them by hand if wanted (rm -rf /var/lib/as2box /etc/as2box).
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl daemon-reload || true
fi
