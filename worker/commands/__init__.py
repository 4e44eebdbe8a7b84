"""The ``sentiment`` command line (:mod:`~worker.commands.cli`) and what its subcommands run
(:mod:`~worker.commands.dev_broker`: the tansu dev broker behind ``sentiment broker``)."""
