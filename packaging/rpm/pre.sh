# myelin %pre: the service's user.
getent group myelin >/dev/null || groupadd -r myelin
getent passwd myelin >/dev/null || \
    useradd -r -g myelin -d /var/lib/myelin -s /sbin/nologin -c "Myelin reverse proxy" myelin
exit 0
