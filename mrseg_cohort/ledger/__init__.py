"""The output ledger: what an output holds, who may write to it, and how results become visible.

One package for the guarantees of an output folder (local or object storage), each module one part:

- :mod:`.outputs`: the layout of the output, where each file goes, staging and publication of
  batches, recovery after a crash, what this tool owns there and ``--restart``;
- :mod:`.log`: the commit log, numbered entries created exclusively: the one order of every lease
  and every batch, and the fencing token a run publishes with;
- :mod:`.lease`: who holds the output (or a shard of it): lease files with heartbeats, judged stale
  on the store's own clock;
- :mod:`.fingerprint`: what defines the results (one configuration per output);
- :mod:`.work_units`: units of work (a scan and the models still to run on it);
- :mod:`.names`: file names of keys that round-trip for every id the manifest accepts.

Invariants, each tested under faults (tests/test_ledger.py, tests/test_operators.py, the soak):

1. Every scan and model is in every table once: a batch is published by creating the next entry of
   the commit log exclusively, after reading every entry before it and leaving out what they hold.
2. A batch is visible in all tables or in none, except while its parts are moved into ``tables/``:
   its parts are written whole under ``_work/parts/`` first, then moved (a rename on disk, a
   server-side copy on object stores), ``scans`` last; recovery finishes an interrupted move.
3. Nothing committed is redone: the plan is the manifest minus what the tables hold, per scan and
   model, after recovery has finished every logged batch.
4. Nothing outside the output is written or deleted: every deletion is checked to lie under the
   output, paths resolved (symbolic links followed); label files are recorded relative to the
   output, so a copied or moved output stays whole.
5. A run that no longer holds its lease publishes nothing: it is fenced by the log, where a later
   lease entry of an overlapping scope stops it before its batch entry can be created; it then
   stops with one line (exit 2).
6. Shards of one output (job arrays) hold leases of their own scopes and never share a scan; runs
   of overlapping scopes (another shard count, an unsharded run) are refused while one is live.
7. Staleness is judged on the store's clock (a lease file's modification time against a probe's),
   never by comparing one machine's clock with another's; lease generations are never reused.
"""
