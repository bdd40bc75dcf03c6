"""The LossWeightTuner actor killed mid-run comes back (Ray restarts it) with the state
of its last report, read from its state file: nothing already reported is lost."""

import math

from _actors import kill_and_wait_restart

from ogi_ray.train.tuner import LossWeightTuner, TunerConfig


def test_killed_tuner_restarts_with_last_reported_state(ray_local, tmp_path):
    ray = ray_local
    cfg = TunerConfig(objectives=["lm", "vision", "embod"], warmup=2)
    path = str(tmp_path / "tuner_state.json")
    actor = (
        ray.remote(LossWeightTuner)
        .options(num_cpus=0, max_restarts=-1, max_task_retries=-1)
        .remote(cfg, path)
    )
    for step in range(12):
        actor.report.remote(step, {"lm": 1.0, "vision": 10.0 * (1 + 0.01 * step), "embod": 0.1})
    before = ray.get(actor.state_dict.remote())
    assert before["state"]["last_step"] == 11
    assert not math.isclose(before["state"]["lambdas"]["vision"], 1.0)  # it did move λ
    kill_and_wait_restart(ray, actor)
    after = ray.get(actor.state_dict.remote())  # the new process, from the state file
    assert after["state"] == before["state"]
    ray.get(actor.report.remote(12, {"lm": 1.0, "vision": 10.0, "embod": 0.1}))
    assert ray.get(actor.state_dict.remote())["state"]["last_step"] == 12
    ray.kill(actor, no_restart=True)
