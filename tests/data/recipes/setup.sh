#!/bin/sh
# Runs inside the image root (never on the build host).
set -eu
systemctl enable apache2.service ssh.service
