# myelin %post: directories, and systemd learns the unit. Nothing is enabled or started: the
# configuration must be edited first.
[ -d /var/lib/myelin ] || install -d -m 0700 -o myelin -g myelin /var/lib/myelin
[ -d /etc/myelin/tls ] || install -d -m 0750 -o root -g myelin /etc/myelin/tls
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
exit 0
