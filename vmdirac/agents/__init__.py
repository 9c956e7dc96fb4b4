"""One module per agent: a loop around one pure decision."""
