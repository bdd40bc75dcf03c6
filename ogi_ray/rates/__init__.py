"""Exchange rates measured from a swarm of proxy trainings on Ray Tune (issue 14, DESIGN 16).

    CONFIG.yaml ──config.load_swarm──► SwarmConfig
        ──swarm.run_swarm──► corpora per proxy mixture (design.py), one Ray Tune trial per
                             proxy (each a small `ogi train`), trial table (observe.py reads
                             what each proxy trained on and how it scored)
        ──measure.fit_swarm──► target metric (metric.py) ──scaling.ratefit──► rates with
                               bootstrap intervals, per-objective transfer table
        ──corpus.rates_file.write_rates_file──► RATES.json (hashed; mixtures pin it)
        ──propose.propose──► the mixing law's best source shares at a budget ──► MIXTURE.yaml

The math (ratefit.py) and the rates file (rates.py) live in ogi_ray.scaling, which never
imports Ray or torch; this package runs the swarm. `ogi rates` is cli.py.
"""
