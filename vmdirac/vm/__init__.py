"""Virtual-machine logic: instance states, pod and endpoint configuration, allocation policy.
Pure: no DB, no network."""
