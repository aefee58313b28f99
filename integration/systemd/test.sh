#!/bin/bash
echo "pid1: $(cat /proc/1/comm)"; systemctl is-system-running; uname -r; ls /payload
