# Creates the ragspool system user, the spool tree and log files; enables nothing.
getent group ragspool >/dev/null || groupadd --system ragspool
getent passwd ragspool >/dev/null || useradd --system --gid ragspool --home-dir /var/spool/ragspool \
    --no-create-home --shell /sbin/nologin --comment "ragspool ingestion" ragspool
chown root:ragspool /etc/ragspool/ragspool.env
chmod 0640 /etc/ragspool/ragspool.env
/usr/bin/ragspool --env-file /etc/ragspool/ragspool.env init --owner ragspool:ragspool || :
if [ -d /run/systemd/system ]; then systemctl daemon-reload >/dev/null 2>&1 || :; fi
