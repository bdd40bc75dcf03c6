"""Verifiable checkpoint lineage: weight hashing, records, the registry, verification.

    checkpoint weights ─► merkle (one process) / sharded (FSDP, TP: no full gather)
                          ─► weights_root ─┐
    checkpoint folder ─► record.checkpoint_files ─┤
    manifest_hash, config hash, cursor, rng, eval ┼─► record.make_record
    parent (= registry HEAD) ─────────────────────┘      ─► LineageRegistry.append
                                   (store: content-addressed, atomic, any pyarrow.fs URI)
    verify.verify_run(run) re-derives every hash from the files alone (+ corpus shards,
    signatures via sign, replay of segments chosen by segments); prove: one tensor's path.

Format: docs/lineage.md. This package never imports ``ogi_ray.train``; ``cli.register``
adds the ``ogi lineage`` subcommands.
"""
