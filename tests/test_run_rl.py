"""Meta-RL runs end to end: train nav2d from the command line, resume bit for bit, evaluate,
plot; and a mixed supervised + RL meta-batch that trains."""

import json

import pytest
import torch
from safetensors.torch import load_file

from mamlkit import MAML
from mamlkit.cli import main
from mamlkit.rl.losses import VPGLoss, gaussian_log_prob, surrogate_loss
from mamlkit.rl.outer import OuterSettings, outer_step
from mamlkit.rl.policy import GaussianPolicy
from mamlkit.run.adapted import adapted_policy, query_actions
from mamlkit.run.config import resolve
from mamlkit.tasks import ImitationTasks, RLTasks

TINY = ["--set", "meta_batch_size=3", "--set", "trajectories=4", "--set", "horizon=20",
        "--set", "policy_hidden=[16]", "--set", "val_tasks=3", "--set", "val_every=2",
        "--set", "checkpoint_every=2"]
TRPO = ["--set", "cg_iters=3"]  # a TRPO key: refused where the outer step is adam or ppo


def _weights(run):
    pointer = (run / "checkpoints" / "latest").read_text().strip()
    return load_file(run / "checkpoints" / pointer / "model.safetensors")


def _whole_and_resumed(whole, split, args, iterations):
    """The weights of a run of ``iterations`` and of one stopped after 2, then resumed to
    ``iterations`` (config.yaml edited, as a user extends a run)."""
    assert main(["train", "nav2d", "--out", str(whole), "--set", f"iterations={iterations}",
                 *args]) == 0
    assert main(["train", "nav2d", "--out", str(split), "--set", "iterations=2", *args]) == 0
    config = split / "config.yaml"
    config.write_text(config.read_text().replace("iterations: 2", f"iterations: {iterations}"))
    assert main(["train", "nav2d", "--out", str(split), "--resume", "--no-progress"]) == 0
    return _weights(whole), _weights(split)


@pytest.mark.parametrize("extra", [TRPO, pytest.param(["--set", "first_order=true", "--set",
                                                         "outer=adam", "--set", "inner_steps=2"],
                                                        marks=pytest.mark.slow),
                                   ["--set", "estimator=dice", *TRPO],
                                   pytest.param(["--set", "estimator=lvc", "--set", "outer=ppo"],
                                                marks=pytest.mark.slow)])
def test_nav2d_train_resume_is_bit_exact_and_eval_writes_returns(tmp_path, capsys, extra):
    whole, split = tmp_path / "whole", tmp_path / "split"
    a, b = _whole_and_resumed(whole, split, ["--no-progress", *TINY, *extra], 4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    assert {"pre_return", "post_return", "std", "kl"} <= set(records[-1])
    assert (whole / "best" / "model.safetensors").is_file()
    capsys.readouterr()
    assert main(["eval", str(whole), "--tasks", "3"]) == 0
    table = capsys.readouterr().out
    assert "return on 3 held-out tasks" in table and "random" in table
    result = json.loads((whole / "eval.json").read_text())
    assert result["metric"] == "return" and set(result["steps"]) == {"0", "1", "2", "3"}
    assert result["random_policy"]["metric"] == "return"
    if not extra:
        assert main(["plot", str(whole)]) == 0
        assert (whole / "trajectories.png").stat().st_size > 10_000


def test_rl_config_checks_give_one_sentence():
    from mamlkit.run.config import ConfigError

    with pytest.raises(ConfigError, match="'outer' must be one of"):
        resolve("nav2d", {"outer": "sgd"})
    with pytest.raises(ConfigError, match="min_std"):
        resolve("nav2d", {"min_std": 2.0})
    assert resolve("nav2d", {"inner_lr": 0}).eval_inner_lr == 0.1


@pytest.mark.parametrize("algorithm", [pytest.param("metasgd", marks=pytest.mark.slow),
                                       pytest.param("anil", marks=pytest.mark.slow), "mamlpp"])
def test_the_family_trains_on_nav2d_and_resumes_bit_exactly(tmp_path, capsys, algorithm):
    """``--set algorithm=...`` on an RL preset: same loop, checkpoints, evaluation as MAML."""
    whole, split = tmp_path / "whole", tmp_path / "split"
    args = ["--no-progress", *TINY, "--set", f"algorithm={algorithm}", "--set",
            "first_order=true", "--set", "outer=adam"]
    a, b = _whole_and_resumed(whole, split, args, 3)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if algorithm in ("metasgd", "mamlpp"):  # learned rates are part of the learner's state
        assert any(k.startswith(("lrs.", "lslr_rates.")) for k in a)
    capsys.readouterr()
    assert main(["eval", str(whole), "--tasks", "2"]) == 0
    result = json.loads((whole / "eval.json").read_text())
    assert result["metric"] == "return"
    assert result["inner_lr"] == ("learned" if algorithm != "anil" else 0.1)


def test_rl_refuses_reptile_and_imaml_and_mixed_evaluation(tmp_path, capsys):
    from mamlkit.run.config import ConfigError

    for algorithm in ("reptile", "imaml"):
        with pytest.raises(ConfigError, match="no meta-RL form"):
            resolve("nav2d", {"algorithm": algorithm})
    rl, sup = tmp_path / "rl", tmp_path / "sup"
    assert main(["train", "nav2d", "--out", str(rl), "--no-progress", *TINY, *TRPO,
                 "--set", "iterations=1"]) == 0
    assert main(["train", "sinusoid", "--out", str(sup), "--no-progress",
                 "--set", "iterations=2", "--set", "eval_tasks=5"]) == 0
    assert main(["eval", str(rl), str(sup)]) == 2
    assert "evaluate RL and supervised runs separately" in capsys.readouterr().err


def test_mixed_meta_batch_trains_both_groups():
    """RL tasks and imitation tasks share one learner and one inner step: both meta-losses send
    gradients, and a few Adam steps on the summed meta-loss lower the imitation meta-loss."""
    from mamlkit.envs import make_batch_env

    torch.manual_seed(0)
    tasks = RLTasks(make_batch_env("nav2d", horizon=15), trajectories=4)
    policy = GaussianPolicy(2, 2, (16,), "tanh")
    learner = MAML(policy, 0.1, loss_fn=VPGLoss())
    g = torch.Generator().manual_seed(0)
    demos = ImitationTasks(10).sample(4, g)
    rl = tasks.collect(tasks.sample_tasks(3, g), g, adapted_policy(learner), 1)

    def imitation():
        return learner.meta_loss(demos)  # the same learner, the batch's own (imitation) loss

    def dist(k):
        return learner.map_adapted(rl.tasks if k is None else rl.tasks[:k], query_actions)

    network = list(policy.mean.parameters())
    mean, std = dist(None)
    log_probs = gaussian_log_prob(mean, std, rl.tasks.query.actions)
    rl_loss = surrogate_loss(log_probs, log_probs.detach(), rl.tasks.query.advantages,
                             rl.tasks.query.mask)
    rl_grads = torch.autograd.grad(rl_loss, network)
    im_grads = torch.autograd.grad(imitation(), network)
    assert all(g.abs().sum() > 0 for g in rl_grads + im_grads)
    opt = torch.optim.Adam(policy.parameters(), lr=1e-2)
    before = imitation().item()
    for _ in range(20):
        outer_step(list(learner.parameters()), dist, rl.tasks.query, OuterSettings("adam"), opt,
                   extra_loss=imitation)
    assert imitation().item() < 0.8 * before


def test_the_papers_evaluation_protocol_more_trajectories_and_a_step_size_schedule(
        tmp_path, capsys, monkeypatch):
    """``eval_trajectories`` samples more per step at evaluation than in training, and a list
    ``eval_inner_lr`` adapts with one step size per step, its last entry repeated (the paper's
    0.1 then 0.05), applied step by step to the adaptation that samples each next set."""
    from mamlkit.run import adapted, held_out
    from mamlkit.run.adapted import inner_lr_at_eval

    config = resolve("nav2d", {"eval_inner_lr": [0.1, 0.05], "eval_steps": [0, 1, 3]})
    assert inner_lr_at_eval(config) == [0.1, 0.05, 0.05]
    assert inner_lr_at_eval(config, 5) == [0.1, 0.05, 0.05, 0.05, 0.05]
    assert inner_lr_at_eval(resolve("nav2d", {"eval_inner_lr": 0.2})) == 0.2
    run = tmp_path / "run"
    assert main(["train", "nav2d", "--out", str(run), "--no-progress", *TINY, *TRPO,
                 "--set", "iterations=1", "--set", "eval_trajectories=6",
                 "--set", "eval_inner_lr=[0.1, 0.05]", "--set", "eval_steps=[0, 1, 2]"]) == 0
    sampled, rates = [], []
    sample = RLTasks._sample
    monkeypatch.setattr(RLTasks, "_sample", lambda self, *a: (sampled.append(self.trajectories),
                                                             sample(self, *a))[1])
    policy = adapted.adapted_policy
    monkeypatch.setattr(held_out, "adapted_policy",
                        lambda learner, lr=None: (rates.append(lr), policy(learner, lr))[1])
    assert main(["eval", str(run), "--tasks", "2"]) == 0
    # the run and its random-init reference, each sampling before and after 1 and 2 steps
    assert sampled == [6] * 6 and rates == [[0.1, 0.05]] * 2
    result = json.loads((run / "eval.json").read_text())
    assert result["inner_lr"] == [0.1, 0.05] and "0.1,0.05" in capsys.readouterr().out
