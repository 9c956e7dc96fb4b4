"""One module per cloud API behind the small interface of ``base.Driver``."""
