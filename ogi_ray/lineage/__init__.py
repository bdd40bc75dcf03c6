"""Verifiable checkpoint lineage: weight hashing, records, the registry, verification.

    checkpoint weights ─► merkle.weights_root ─┐
    corpus manifest_hash, config hash, cursor ─┼─► record.make_record ─► LineageRegistry.append
    parent (= registry HEAD) ───────────────────┘        (content-addressed, atomic)
    verify.verify_run(run) re-derives every hash from the files alone.

Format: docs/lineage.md. This package never imports ``ogi_ray.train``.
"""
