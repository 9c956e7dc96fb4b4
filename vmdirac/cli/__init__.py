"""The ``dirac-*`` and ``vmdirac-*`` commands: small modules, one line on stderr for an error."""
