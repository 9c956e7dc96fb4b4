"""The web portal: Job Monitor, Launch Pad, Proxy upload, Virtual Machines, Accounting."""
