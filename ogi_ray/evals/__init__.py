"""The eval suite and sampling: what a checkpoint has learned, on benchmarks that ship
offline, deterministically on CPU (docs/evals.md).

    load.load_run(run, step) ─► LoadedModel ─► suite.run_suite(lm, SuiteConfig) ─► SuiteResult
        benchmarks: heldout (per-source loss), humaneval (code), digits (vision),
                    world (next-chunk latents), metaworld (embodied; module embodied.py)
    sample.py: continue_text, nearest_captions, sample_actions; sample_cli.register adds
    ``ogi sample``.

No Ray and no torch.distributed here: the caller decides where an eval runs.
"""
