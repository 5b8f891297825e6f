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
# `hashex lookup --peers`: a peer asked did not answer (unreachable, refused, timed out,
# failed), so hashes asked of it are unchecked there. This takes precedence over 0 and 1: the
# matches found are still printed, but "no match" for the hashes that peer was asked is not
# known. A peer not asked because the node's store matched everything leaves the result
# complete.
INCOMPLETE = 5
# The node refused the caller: its certificate (UNAUTHENTICATED) or its role (PERMISSION_DENIED,
# the message names the role needed). Nothing was changed.
REFUSED = 6
# `hashex import`: not every record was stored: some were rejected (each reported with its
# position and why), or the file broke off, or the node refused a batch midway (--strict); what
# was stored is said.
PARTIAL = 7
# The output was closed before the command finished writing (as `| head` does): the shell's
# code for a command ended by SIGPIPE.
OUTPUT_CLOSED = 141

EPILOG = """exit codes:
  0  success (for lookup: at least one match, and every peer asked answered)
  1  lookup: no match
  2  bad input: nothing was sent or stored
  3  the node could not be reached or failed
  4  not found: the media, series, victim or peer named does not exist
  5  incomplete: a peer asked did not answer (lookup --peers: matches found are still
     printed; audit verify --against-peers: the log is not witnessed by every peer)
  6  refused: the certificate or its role does not allow this; nothing was changed
  7  import: not every record was stored (rejected records are reported, or the file
     broke off, or the node refused a batch midway); what was stored is said
  141  the output was closed early (as by `| head`)"""
