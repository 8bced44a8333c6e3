"""The MAML family: each variant's meta-gradient against an independent computation, the
reductions to MAML when a variant's extra is switched off, and training, resume and the CLI."""

import json

import pytest
import torch
from reference import plain_meta_loss
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call

import mamlkit
from mamlkit import ANIL, IMAML, MAML, MAMLpp, MetaSGD, Reptile, TaskBatch
from mamlkit.cli import main
from mamlkit.functional import mse
from mamlkit.functional.cg import conjugate_gradient
from mamlkit.functional.schedules import cosine_lr, msl_weights
from mamlkit.functional.select import select_names
from mamlkit.models import Conv4, mlp
from mamlkit.models.batch_norm import TaskBatchNorm
from mamlkit.run import checkpoint
from mamlkit.run.config import ConfigError, resolve
from mamlkit.run.load import load
from mamlkit.run.loop import train


def tiny_mlp():
    return mlp([1, 6, 6, 1], activation=nn.Tanh).double()


def bn_mlp():
    """A tiny MLP with batch norm, so that MAML++'s per-step batch-norm parameters matter."""
    return nn.Sequential(nn.Linear(1, 6), nn.Tanh(), nn.Linear(6, 6), TaskBatchNorm(6), nn.Tanh(),
                         nn.Linear(6, 1)).double()


def sinusoid_batch(tasks=3, shots=5, seed=0):
    b = mamlkit.Sinusoid(shots=shots).sample(tasks, seed)
    return TaskBatch(tuple(t.double() for t in b.support), tuple(t.double() for t in b.query))


def conv_batch(tasks=3, ways=3):
    g = torch.Generator().manual_seed(1)
    sx, qx = (torch.randn(tasks, ways * n, 1, 28, 28, generator=g, dtype=torch.double)
              for n in (1, 2))
    sy, qy = (torch.arange(ways).repeat(tasks, n) for n in (1, 2))
    return TaskBatch((sx, sy), (qx, qy))


def grads_of(learner, batch):
    learner.zero_grad(set_to_none=True)
    loss = learner.meta_loss(batch)
    loss.backward()
    return loss.detach(), [p.grad.clone() if p.grad is not None else torch.zeros_like(p)
                           for p in learner.parameters()]


def finite_differences(learner, batch, eps=1e-6):
    """Central differences of the meta-objective with respect to every learner parameter."""
    value = (lambda: learner.objective(batch)[0]) if isinstance(learner, MAMLpp) else (
        lambda: learner.meta_loss(batch))
    params = [p for p in learner.parameters()]
    flat = nn.utils.parameters_to_vector(params).detach()
    numeric = torch.zeros_like(flat)
    with torch.no_grad():
        for i in range(flat.numel()):
            for sign in (1, -1):
                shifted = flat.clone()
                shifted[i] += sign * eps
                nn.utils.vector_to_parameters(shifted, params)
                numeric[i] += sign * value().item() / (2 * eps)
        nn.utils.vector_to_parameters(flat, params)
    return numeric


def check_against_finite_differences(learner, batch):
    _, analytic = grads_of(learner, batch)
    analytic = torch.cat([g.flatten() for g in analytic])
    assert torch.allclose(analytic, finite_differences(learner, batch), atol=1e-6, rtol=1e-6)


# --- meta-gradients against finite differences ---------------------------------------------

@pytest.mark.parametrize("batching", ["vmap", pytest.param("loop", marks=pytest.mark.slow)])
def test_metasgd_gradient_for_weights_and_rates_matches_finite_differences(batching):
    learner = MetaSGD(tiny_mlp(), inner_lr=0.05, inner_steps=2, batching=batching)
    with torch.no_grad():  # rates that differ per element, so a wrong broadcast would show
        for rate in learner.lrs.values():
            rate.uniform_(0.01, 0.1)
    check_against_finite_differences(learner, sinusoid_batch())


def test_anil_gradient_matches_finite_differences_and_body_is_not_adapted():
    learner = ANIL(tiny_mlp(), inner_lr=0.1, inner_steps=2)
    assert learner.adapt_names == ["4.weight", "4.bias"]
    check_against_finite_differences(learner, sinusoid_batch())
    b = sinusoid_batch(tasks=1)
    adapted = learner.adapt(b.support[0][0], b.support[1][0])
    params = learner.params()
    assert all(adapted[n] is params[n] for n in params if not n.startswith("4."))
    assert not torch.equal(adapted["4.weight"], params["4.weight"])


@pytest.mark.parametrize("batching", ["vmap", pytest.param("loop", marks=pytest.mark.slow)])
def test_mamlpp_with_every_switch_matches_finite_differences(batching):
    learner = MAMLpp(bn_mlp(), inner_lr=0.05, inner_steps=3, batching=batching, msl=True,
                     msl_iterations=10, lslr=True, bnwb=True, fo_iterations=2)
    learner.set_iteration(4, 100)  # past first order; MSL weights still on every step
    assert not learner.first_order and len(set(learner.weights(3))) == 2
    with torch.no_grad():
        for rates in learner.lslr_rates.values():
            rates.uniform_(0.02, 0.08)
        for copies in learner.bn_steps.values():
            copies.add_(0.1 * torch.randn_like(copies))
    check_against_finite_differences(learner, sinusoid_batch())


def test_mamlpp_derivative_order_annealing_switches_to_second_order():
    learner = MAMLpp(tiny_mlp(), inner_lr=0.05, inner_steps=2, msl=False, lslr=False,
                     fo_iterations=3)
    first = MAML(learner.model, 0.05, 2, first_order=True)
    second = MAML(learner.model, 0.05, 2)
    batch = sinusoid_batch()
    learner.set_iteration(3, 10)
    assert all(torch.equal(a, b) for a, b in zip(grads_of(learner, batch)[1],
                                                 grads_of(first, batch)[1], strict=True))
    learner.set_iteration(4, 10)
    assert all(torch.equal(a, b) for a, b in zip(grads_of(learner, batch)[1],
                                                 grads_of(second, batch)[1], strict=True))


# --- reductions to MAML ---------------------------------------------------------------------

def assert_same_as_maml(variant, maml, batch):
    loss_v, grads_v = grads_of(variant, batch)
    loss_m, grads_m = grads_of(maml, batch)
    assert torch.allclose(loss_v, loss_m, atol=1e-13, rtol=0)
    model_grads = grads_v[:len(grads_m)]  # the model's parameters come first
    for a, b in zip(model_grads, grads_m, strict=True):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_metasgd_with_rates_frozen_at_alpha_equals_maml(batching):
    model = tiny_mlp()
    learner = MetaSGD(model, inner_lr=0.05, inner_steps=2, batching=batching)
    for rate in learner.lrs.values():
        rate.requires_grad_(False)
    assert_same_as_maml(learner, MAML(model, 0.05, 2, batching=batching), sinusoid_batch())


def test_anil_with_every_parameter_adapted_equals_maml():
    model = tiny_mlp()
    assert_same_as_maml(ANIL(model, 0.05, 2, adapt_names=["*"]), MAML(model, 0.05, 2),
                        sinusoid_batch())


def test_anil_old_adapt_keyword_still_works_with_a_deprecation_warning():
    model = tiny_mlp()
    with pytest.warns(DeprecationWarning, match="adapt_names"):
        old = ANIL(model, 0.05, 2, adapt=["*"])
    assert old.adapt_names == ANIL(model, 0.05, 2, adapt_names=["*"]).adapt_names
    with pytest.raises(TypeError, match="not both"):
        ANIL(model, 0.05, 2, adapt_names=["*"], adapt=["*"])


@pytest.mark.parametrize("model_fn,batch_fn,loss", [(tiny_mlp, sinusoid_batch, "mse"),
                                                    (lambda: Conv4(3, hidden=4).double(),
                                                     conv_batch, "cross_entropy")])
def test_mamlpp_with_every_switch_off_equals_maml(model_fn, batch_fn, loss):
    model = model_fn()
    learner = MAMLpp(model, 0.05, 2, loss_fn=loss, msl=False, lslr=False, bnwb=False,
                     fo_iterations=0)
    learner.set_iteration(1, 10)
    maml = MAML(model, 0.05, 2, loss_fn=loss)
    assert learner.batching == maml.batching
    assert_same_as_maml(learner, maml, batch_fn())
    assert torch.equal(learner.adaptation_curve(batch_fn(), [0, 1, 3], "mse" if loss == "mse"
                                                else "accuracy"),
                       maml.adaptation_curve(batch_fn(), [0, 1, 3], "mse" if loss == "mse"
                                             else "accuracy"))


def test_variants_on_conv4_stacked_match_the_loop():
    """Meta-SGD, ANIL, MAML++ (all switches) and Reptile give the same update stacked and
    looped."""
    batch = conv_batch()
    for make in (lambda m, b: MetaSGD(m, 0.1, 2, loss_fn="cross_entropy", batching=b),
                 lambda m, b: ANIL(m, 0.1, 2, loss_fn="cross_entropy", batching=b),
                 lambda m, b: MAMLpp(m, 0.1, 2, loss_fn="cross_entropy", batching=b,
                                     msl_iterations=10),
                 lambda m, b: Reptile(m, 0.1, 2, loss_fn="cross_entropy", batching=b)):
        torch.manual_seed(0)
        stacked = make(Conv4(3, hidden=4).double(), "auto")
        assert stacked.batching.kind == "stacked"
        looped = make(Conv4(3, hidden=4).double(), "loop")
        looped.load_state_dict(stacked.state_dict())
        for a, b in zip(grads_of(stacked, batch)[1], grads_of(looped, batch)[1], strict=True):
            assert torch.allclose(a, b, atol=1e-10, rtol=0)


# --- Reptile and implicit MAML ----------------------------------------------------------------

@pytest.mark.parametrize("data", ["all", "support"])
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_reptile_update_is_the_mean_difference(data, batching):
    model = tiny_mlp()
    batch = sinusoid_batch()
    learner = Reptile(model, inner_lr=0.1, inner_steps=3, data=data, batching=batching)
    loss, grads = grads_of(learner, batch)
    theta = {n: p.detach() for n, p in model.named_parameters()}
    differences, query = [], []
    for i in range(batch.num_tasks):
        x, y = batch.support[0][i], batch.support[1][i]
        if data == "all":
            x, y = torch.cat([x, batch.query[0][i]]), torch.cat([y, batch.query[1][i]])
        fast = {n: p.clone().requires_grad_() for n, p in theta.items()}
        for _ in range(3):
            g = torch.autograd.grad(mse(functional_call(model, fast, (x,)), y),
                                    list(fast.values()))
            fast = {n: (p - 0.1 * gi).detach().requires_grad_()
                    for (n, p), gi in zip(fast.items(), g, strict=True)}
        differences.append({n: theta[n] - fast[n] for n in theta})
        query.append(mse(functional_call(model, fast, (batch.query[0][i],)), batch.query[1][i]))
    for (n, _), g in zip(model.named_parameters(), grads, strict=True):
        expected = torch.stack([d[n] for d in differences]).mean(0)
        assert torch.allclose(g, expected, atol=1e-12, rtol=0)
    assert torch.allclose(loss, torch.stack(query).mean().detach(), atol=1e-12)


def test_reptile_step_with_sgd_moves_theta_towards_the_adapted_parameters():
    model = tiny_mlp()
    learner = Reptile(model, inner_lr=0.1, inner_steps=2, data="support")
    batch = sinusoid_batch(tasks=1)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    adapted = learner.adapt(batch.support[0][0], batch.support[1][0])
    optimizer = torch.optim.SGD(learner.parameters(), lr=1.0)
    learner.meta_loss(batch).backward()
    optimizer.step()  # epsilon = 1: theta becomes theta'
    for n, p in model.named_parameters():
        assert torch.allclose(p, adapted[n].detach(), atol=1e-12) and not torch.equal(p, before[n])


def test_conjugate_gradient_solves_a_small_spd_system_exactly():
    a = torch.tensor([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]], dtype=torch.double)
    b = {"v": torch.tensor([1.0, -2.0, 0.5], dtype=torch.double)}
    x = conjugate_gradient(lambda p: {"v": a @ p["v"]}, b, steps=3)["v"]
    assert torch.allclose(x, torch.linalg.solve(a, b["v"]), atol=1e-12)
    zero = conjugate_gradient(lambda p: {"v": a @ p["v"]}, {"v": torch.zeros(3).double()}, 3)
    assert torch.equal(zero["v"], torch.zeros(3).double())  # no division by zero
    # an indefinite matrix stops the iteration (truncated CG): b itself, finite
    indefinite = torch.diag(torch.tensor([1.0, -1.0], dtype=torch.double))
    b2 = {"v": torch.ones(2, dtype=torch.double)}
    assert torch.equal(conjugate_gradient(lambda p: {"v": indefinite @ p["v"]}, b2, 2)["v"],
                       b2["v"])


@pytest.mark.slow
@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_imaml_gradient_matches_the_unrolled_gradient_on_a_quadratic(batching):
    """Linear model, MSE: the proximal inner problem is quadratic. Gradient descent run to
    convergence and differentiated through (unrolled, second order) and the implicit gradient
    with exact conjugate gradient (d steps for d parameters) are the same number."""
    d, n, lam, lr, steps = 3, 8, 2.0, 0.05, 400
    torch.manual_seed(3)
    model = nn.Linear(d, 1, bias=False).double()
    xs, xq = torch.randn(2, n, d, dtype=torch.double), torch.randn(2, n, d, dtype=torch.double)
    w_true = torch.randn(2, d, 1, dtype=torch.double)
    batch = TaskBatch((xs, xs @ w_true), (xq, xq @ w_true))
    learner = IMAML(model, inner_lr=lr, inner_steps=steps, lam=lam, cg_steps=d,
                    batching=batching)
    loss, (implicit,) = grads_of(learner, batch)

    theta = model.weight
    unrolled_losses = []
    for t in range(2):
        phi = theta
        for _ in range(steps):
            inner = mse(xs[t] @ phi.T, xs[t] @ w_true[t]) + lam / 2 * ((phi - theta) ** 2).sum()
            (g,) = torch.autograd.grad(inner, phi, create_graph=True)
            phi = phi - lr * g
        unrolled_losses.append(mse(xq[t] @ phi.T, xq[t] @ w_true[t]))
    unrolled_loss = torch.stack(unrolled_losses).mean()
    (unrolled,) = torch.autograd.grad(unrolled_loss, theta)
    assert torch.allclose(implicit, unrolled, atol=1e-10, rtol=0)
    assert torch.allclose(loss, unrolled_loss.detach(), atol=1e-12)
    # and the Hessian term matters: the first-order answer (query gradient at phi) differs
    learner.cg_steps = 1
    assert (grads_of(learner, batch)[1][0] - unrolled).abs().max() > 1e-4


def graph_size(tensor):
    seen, stack = set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack += [n for n, _ in node.next_functions]
    return len(seen)


def test_imaml_graph_does_not_grow_with_inner_steps():
    """What makes iMAML's memory independent of the inner loop: the meta-loss keeps no graph of
    it (MAML's graph grows with every step)."""
    batch = sinusoid_batch()
    sizes = [graph_size(IMAML(tiny_mlp(), 0.01, steps, lam=2.0).meta_loss(batch))
             for steps in (2, 8)]
    maml = [graph_size(MAML(tiny_mlp(), 0.01, steps).meta_loss(batch)) for steps in (2, 8)]
    assert sizes[0] == sizes[1] and maml[1] > maml[0]


# --- pieces ---------------------------------------------------------------------------------

def test_glob_patterns_select_parameters_and_typos_are_clear():
    names = ["features.0.weight", "features.0.bias", "head.weight", "head.bias"]
    assert select_names(names, ["head.*"]) == ["head.weight", "head.bias"]
    assert select_names(names, ["head"]) == ["head.weight", "head.bias"]
    assert select_names(names, ["*.bias"]) == ["features.0.bias", "head.bias"]
    with pytest.raises(ValueError, match="'haed.*' matches no parameter"):
        select_names(names, ["haed.*"])
    assert MAML(Conv4(5, hidden=4), 0.1, adapt_names=["head"]).adapt_names == [
        "head.weight", "head.bias"]


def test_msl_weights_anneal_onto_the_last_step_and_cosine_ends_at_the_minimum():
    assert msl_weights(4, 0, 100) == [0.25] * 4
    late = msl_weights(4, 100, 100)
    assert late[:3] == [0.03 / 4] * 3 and abs(sum(late) - 1) < 1e-12
    assert all(abs(sum(msl_weights(5, i, 50)) - 1) < 1e-12 for i in range(0, 80, 7))
    assert cosine_lr(1e-3, 1e-5, 1, 100) == 1e-3 and abs(cosine_lr(1e-3, 1e-5, 100, 100)
                                                        - 1e-5) < 1e-15


def test_learned_rate_learners_are_parameters_and_ignore_a_scalar_eval_rate():
    for learner in (MetaSGD(tiny_mlp(), 0.05), MAMLpp(tiny_mlp(), 0.05, 2)):
        assert learner.learned_rates
        extra = len(list(learner.parameters())) - len(list(learner.model.parameters()))
        assert extra > 0
        b = sinusoid_batch()
        assert torch.equal(learner.adaptation_curve(b, [1], "mse", inner_lr=0.5),
                           learner.adaptation_curve(b, [1], "mse"))
    assert not MAMLpp(tiny_mlp(), 0.05, 2, lslr=False).learned_rates


# --- training, resume, evaluation, CLI ------------------------------------------------------

SMALL = {"iterations": 12, "meta_batch_size": 3, "log_every": 4, "val_every": 8,
         "val_tasks": 6, "checkpoint_every": 4, "shots": 5}


def state(run_dir):
    from safetensors.torch import load_file
    return load_file(checkpoint.latest(run_dir) / "model.safetensors")


@pytest.mark.parametrize("preset,extra", [
    ("sinusoid-metasgd", {}),
    ("sinusoid-anil", {}),
    ("sinusoid-mamlpp", {"inner_steps": 2, "msl_iterations": 8, "fo_iterations": 6}),
    ("sinusoid-reptile", {"inner_steps": 2}),
    pytest.param("sinusoid-imaml", {"inner_steps": 3, "imaml_cg_steps": 2}, marks=pytest.mark.slow),
])
def test_train_kill_and_resume_is_bit_exact(tmp_path, preset, extra):
    config = resolve(preset, {**SMALL, **extra})
    train(config, tmp_path / "whole", progress=False)
    train(config, tmp_path / "killed", progress=False, stop_after=6)  # last checkpoint: 4
    result = train(config, tmp_path / "killed", resume=True, progress=False)
    assert result.iteration == 12
    whole, resumed = state(tmp_path / "whole"), state(tmp_path / "killed")
    assert set(whole) == set(resumed) and len(whole) > len(result.learner.model.state_dict()) \
        or preset in ("sinusoid-anil", "sinusoid-reptile", "sinusoid-imaml")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    if preset == "sinusoid-mamlpp":  # the cosine schedule reached the end, from the resume too
        opt = json.loads((checkpoint.latest(tmp_path / "killed") / "state.json").read_text())
        assert opt["param_groups"][0]["lr"] == pytest.approx(config.min_meta_lr)
    loaded = load(tmp_path / "killed")
    assert all(torch.equal(t, resumed[k]) for k, t in loaded.state_dict().items())


def test_runs_saved_with_the_bare_model_still_load(tmp_path):
    run = tmp_path / "old"
    train(resolve("sinusoid", SMALL), run, progress=False)
    path = checkpoint.latest(run)
    learner = load(run)
    bare = {k.removeprefix("model."): v for k, v in learner.state_dict().items()}
    save_file(bare, path / "model.safetensors")  # what checkpoints held before the family
    (path / "SHA256SUMS").unlink()  # ... which had no sums either
    reloaded = load(run)
    assert all(torch.equal(reloaded.model.state_dict()[k], v) for k, v in bare.items())
    train(resolve("sinusoid", {**SMALL, "iterations": 16}), run, resume=True, progress=False)


@pytest.mark.parametrize("algorithm", [*(pytest.param(name, marks=pytest.mark.slow)
                                         for name in ("metasgd", "mamlpp", "imaml")),
                                       "anil", "reptile"])
def test_cli_set_algorithm_trains_and_evaluates(tmp_path, capsys, algorithm):
    run = tmp_path / algorithm
    argv = ["train", "sinusoid", "--out", str(run), "--no-progress", "--set",
            f"algorithm={algorithm}", "--set", "iterations=6", "--set", "meta_batch_size=3",
            "--set", "log_every=3", "--set", "val_every=6", "--set", "val_tasks=4",
            "--set", "checkpoint_every=6"]
    if algorithm == "imaml":
        argv += ["--set", "inner_steps=2"]
    assert main(argv) == 0
    assert main(["eval", str(run), "--tasks", "20"]) == 0
    result = json.loads((run / "eval.json").read_text())
    learned = algorithm in ("metasgd", "mamlpp")
    assert (result["inner_lr"] == "learned") == learned
    assert "learned" in capsys.readouterr().out or not learned
    assert type(load(run).learner).__name__ == {"metasgd": "MetaSGD", "anil": "ANIL",
                                                "mamlpp": "MAMLpp", "reptile": "Reptile",
                                                "imaml": "IMAML"}[algorithm]


def test_bad_family_keys_give_one_sentence(tmp_path, capsys):
    assert main(["train", "sinusoid", "--out", str(tmp_path / "r"),
                 "--set", "algorithm=protonet"]) == 2
    assert "'algorithm' must be one of maml, anil, imaml, metasgd" in capsys.readouterr().err
    assert main(["train", "sinusoid", "--out", str(tmp_path / "r"),
                 "--set", "adapt=[head.*]"]) == 2
    assert "matches no parameter" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="imaml_lambda"):
        resolve("sinusoid-imaml", {"imaml_lambda": 0})


def test_exported_like_maml():
    assert {"MetaSGD", "ANIL", "MAMLpp", "Reptile", "IMAML"} <= set(mamlkit.__all__)
    model = tiny_mlp()
    batch = sinusoid_batch()
    reference = plain_meta_loss(model, batch, mse, 0.05, 1)
    assert torch.allclose(mamlkit.MetaSGD(model, 0.05).meta_loss(batch), reference, atol=1e-12)


@pytest.mark.slow
def test_imaml_clipped_inner_loop_reaches_the_same_fixed_point():
    """Clipping changes the path of the proximal inner loop, not its solution."""
    from mamlkit.functional.implicit import proximal_adapt

    torch.manual_seed(3)
    model = mlp([1, 8, 1]).double()
    params = {n: p.detach() for n, p in model.named_parameters()}
    x = torch.randn(10, 1, dtype=torch.float64)
    y = 3 * torch.sin(x)
    def loss(p, data):
        return mse(functional_call(model, p, (data[0],)), data[1])

    plain = proximal_adapt(loss, params, (x, y), 0.05, 3000, lam=1.0)
    clipped = proximal_adapt(loss, params, (x, y), 0.05, 3000, lam=1.0, max_grad_norm=0.5)
    first = proximal_adapt(loss, params, (x, y), 0.05, 1, lam=1.0, max_grad_norm=0.5)
    step = torch.sqrt(sum(((first[n] - params[n]) ** 2).sum() for n in params))
    assert step <= 0.05 * 0.5 + 1e-12
    for n in params:
        torch.testing.assert_close(clipped[n], plain[n], atol=1e-8, rtol=0)


def test_imaml_evaluates_with_its_proximal_inner_loop():
    """With gd, one proximal step from theta is a plain step, and with lambda -> 0 every step
    is; ``adapt`` and the curve take the same solver steps."""
    torch.manual_seed(4)
    model = mlp([1, 16, 1])
    batch = mamlkit.Sinusoid(shots=10).sample(6, torch.Generator().manual_seed(2))
    plain = MAML(model, inner_lr=0.01).adaptation_curve(batch, [0, 1, 3], "mse")
    tiny = IMAML(model, inner_lr=0.01, lam=1e-9, solver="gd").adaptation_curve(batch, [0, 1, 3],
                                                                              "mse")
    torch.testing.assert_close(tiny, plain, rtol=1e-5, atol=1e-6)
    strong = IMAML(model, inner_lr=0.01, lam=5.0, solver="gd").adaptation_curve(
        batch, [0, 1, 3], "mse")
    torch.testing.assert_close(strong[:2], plain[:2], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(strong[2], plain[2])
    learner = IMAML(model, inner_lr=0.01, lam=5.0)  # the default solver, L-BFGS
    strong = learner.adaptation_curve(batch, [0, 1, 3], "mse")
    (sx, sy), (qx, qy) = batch[0:1].support, batch[0:1].query
    adapted = learner.adapt(sx[0], sy[0], steps=3)
    torch.testing.assert_close(mse(learner(qx[0], adapted), qy[0]), strong[2, 0])


def test_mamlpp_learned_rates_start_from_one_step_size_per_step():
    """LSLR starts every parameter at the step's rate: a per-parameter one is one sentence."""
    rates = {n: 0.1 for n, _ in tiny_mlp().named_parameters()}
    with pytest.raises(TypeError, match=r"^MAML\+\+ with learned rates \(lslr\) takes one step "
                                        r"size per step, not one per parameter\.$"):
        MAMLpp(tiny_mlp(), inner_lr=rates, inner_steps=2, lslr=True)
