"""The framework every component stands on: RPC, security, configuration, DB engine, agents."""
