"""Corpus: real sources → license gate → per-modality tokens → exact mix → shards + manifest.

Entry points: ``build.build_corpus`` (Ray Data), ``manifest.verify_corpus``,
``inspect.table``. Schema of the output: docs/corpus.md.
"""
