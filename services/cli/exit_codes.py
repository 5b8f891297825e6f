"""Exit codes of the `hashex` command, the same for every subcommand."""

from __future__ import annotations

OK = 0
# `hashex lookup`: the lookup worked and nothing matched.
NO_MATCH = 1
# The input was malformed (a bad hash, a bad file line, a bad option); nothing was sent or stored.
BAD_INPUT = 2
# The node could not be reached or answered with an error.
NODE_ERROR = 3
# What the command named (a media, series, victim or peer) does not exist.
NOT_FOUND = 4
# The output was closed before the command finished writing (as `| head` does): the shell's
# code for a command ended by SIGPIPE.
OUTPUT_CLOSED = 141

EPILOG = """exit codes:
  0  success (for lookup: at least one match)
  1  lookup: no match
  2  bad input: nothing was sent or stored
  3  the node could not be reached or failed
  4  not found: the media, series, victim or peer named does not exist
  141  the output was closed early (as by `| head`)"""
