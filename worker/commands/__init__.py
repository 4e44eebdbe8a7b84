"""The ``sentiment`` command line (:mod:`~worker.commands.cli`) and what its subcommands run."""
