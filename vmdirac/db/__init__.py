"""One module per database: its tables and the transactions on them."""
