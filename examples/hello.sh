#!/bin/sh
# A first job: says where it runs, and sets its application status as DIRAC payloads do.
set-application-status "Saying hello" 2>/dev/null || true
echo "hello $1 from $(hostname) as $(id -un), in $(pwd)"
ls -l
