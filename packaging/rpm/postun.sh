# myelin %postun: after an upgrade, restart the service if it was running. /var/lib/myelin
# (ACME state) is never removed by the package.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        systemctl try-restart myelin.service >/dev/null 2>&1 || :
    fi
fi
exit 0
