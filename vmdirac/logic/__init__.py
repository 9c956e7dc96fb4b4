"""Logic that spans several DB modules: what services and agents call, below the RPC edge."""
