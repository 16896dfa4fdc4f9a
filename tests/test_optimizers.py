"""The optimizer kernels and their Python driver against textbook float64 updates.

Each update is written out below in numpy from the published formulas (PyTorch's
conventions: SGD with dampening 0 and Nesterov as torch.optim.SGD; Adam and AdamW as
torch.optim.Adam/AdamW), the L2 term on the first ``n_decayed`` entries. Parameter counts
that are not a multiple of the vector width, a decayed prefix that ends inside a vector,
several tasks, both SIMD widths; the learning-rate schedules; checkpoint state; the
errors; and, where torch is installed, a few steps side by side with torch.optim.
"""
import importlib.util
import math

import numpy as np
import pytest

from cnngen.codegen.cpu.optimizer import chunk_size, tasks
from cnngen.errors import InputError
from cnngen.runtime.optimizers import OPTIMIZERS, LearningRate, make_optimizer
from cnngen.target import ISA_WIDTH, host, resolve

from .kernel_harness import run_calls

TARGETS = [f"cpu-{isa}" for isa in ("avx512", "avx2") if ISA_WIDTH[isa] <= host().vector]
HAS_TORCH = importlib.util.find_spec("torch") is not None


def run_steps(opt, params, grads, cache, first_step=0):
    """The parameters after one kernel update per gradient in ``grads`` (float32), and the
    L2 term each step reported."""
    p = np.asarray(params, np.float32)
    terms = []
    for i, g in enumerate(grads):
        opt.set_step(first_step + i)
        res = run_calls(opt.calls(), {}, {}, {}, 1, opt.target, cache,
                        flat={"params": p, "grads": g, **opt.buffers})
        p = res["params"].astype(np.float32)
        for name, buffer in opt.buffers.items():
            buffer[...] = res[name]
        terms.append(opt.l2_term())
    return p, terms


def reference(kind, params, grads, lrs, l2, n_decayed, momentum=0.0, nesterov=False,
              betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """The textbook updates in float64; lrs[t] is step t's learning rate."""
    p = np.asarray(params, np.float64).copy()
    buf, m, v = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        g = np.asarray(g, np.float64).copy()
        g[:n_decayed] += l2 * p[:n_decayed]
        if kind == "sgd":
            if momentum:
                buf = momentum * buf + g          # torch: buf_1 = g_1
                g = g + momentum * buf if nesterov else buf
            p -= lr * g
        else:
            p[:n_decayed] *= 1.0 - lr * weight_decay          # AdamW, decoupled
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
            p -= lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def assert_close(got, ref):
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-6 * max(1.0, np.abs(ref).max()))


# (optimizer, options)
VARIANTS = [("sgd", {}), ("sgd", {"momentum": 0.9}), ("sgd", {"momentum": 0.8, "nesterov": True}),
            ("adam", {}), ("adam", {"betas": (0.8, 0.99), "eps": 1e-6}),
            ("adamw", {"weight_decay": 0.05})]
# (parameters, decayed): fewer than a vector, a decayed prefix ending inside a vector,
# none decayed, all decayed, LeNet-5's 61706 parameters (several tasks)
SIZES = [(5, 3), (37, 20), (1000, 0), (333, 333), (61706, 61101)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("size, decayed", SIZES, ids=str)
@pytest.mark.parametrize("name, options", VARIANTS, ids=lambda v: str(v))
def test_update_matches_textbook(name, options, size, decayed, target, kernel_cache):
    rng = np.random.default_rng(size)
    params = rng.standard_normal(size)
    grads = [rng.standard_normal(size) for _ in range(4)]
    lr, l2 = (0.1, 0.01) if name == "sgd" else (0.01, 0.001)
    opt = make_optimizer(name, size, decayed, l2, lr, target, **options)
    got, terms = run_steps(opt, params, grads, kernel_cache)
    kind = "sgd" if name == "sgd" else "adam"
    defaults = {"weight_decay": 0.01} if name == "adamw" else {}
    assert_close(got, reference(kind, params, grads, [lr] * 4, l2, decayed,
                                **{**defaults, **options}))
    # the L2 term of the last step's weights (before its update)
    before = reference(kind, params, grads[:3], [lr] * 3, l2, decayed, **{**defaults, **options})
    np.testing.assert_allclose(terms[-1], 0.5 * l2 * np.sum(before[:decayed] ** 2), rtol=1e-5)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_schedule_reaches_the_kernel(name, kernel_cache):
    """Warm-up then cosine: each step's rate goes through opt:hyper into the update."""
    rng = np.random.default_rng(7)
    params, grads = rng.standard_normal(50), [rng.standard_normal(50) for _ in range(6)]
    opt = make_optimizer(name, 50, 30, 0.0, 0.05, "cpu", schedule="cosine", total_steps=6,
                         warmup_steps=2, **({"momentum": 0.9} if name == "sgd" else {}))
    lrs = [opt.lr_at(t) for t in range(6)]
    np.testing.assert_allclose(lrs[:3], [0.025, 0.05, 0.05])
    got, _ = run_steps(opt, params, grads, kernel_cache)
    assert_close(got, reference(name, params, grads, lrs, 0.0, 30,
                                **({"momentum": 0.9} if name == "sgd" else {})))


def test_learning_rate_schedules():
    constant = LearningRate.make("sgd", 0.1)
    assert [constant(t) for t in (0, 10, 10**6)] == [0.1] * 3
    step = LearningRate.make("sgd", 0.1, "step", step_every=3, gamma=0.5)
    np.testing.assert_allclose([step(t) for t in range(7)],
                               [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025])
    cosine = LearningRate.make("sgd", 0.1, "cosine", total_steps=4)
    np.testing.assert_allclose([cosine(t) for t in range(6)],
                               [0.1, 0.1 * (1 + math.cos(math.pi / 4)) / 2, 0.05,
                                0.1 * (1 + math.cos(3 * math.pi / 4)) / 2, 0.0, 0.0],
                               atol=1e-15)
    warm = LearningRate.make("sgd", 0.1, "step", step_every=2, gamma=0.1, warmup_steps=4)
    np.testing.assert_allclose([warm(t) for t in range(8)],
                               [0.025, 0.05, 0.075, 0.1, 0.1, 0.1, 0.01, 0.01])


def test_hyper_array_per_step():
    """Adam's bias corrections at step t = step + 1; AdamW's keep factor uses the step's
    learning rate; 1 - beta in float64; SGD's entries are (lr, l2, momentum)."""
    adamw = make_optimizer("adamw", 10, 4, 0.5, 0.01, "cpu", betas=(0.9, 0.99), eps=1e-7,
                           weight_decay=0.1, schedule="step", step_every=1, gamma=0.5)
    adamw.set_step(2)
    lr = 0.0025
    np.testing.assert_allclose(adamw.buffers["opt:hyper"],
                               [lr / (1 - 0.9 ** 3), 0.5, 0.9, 0.99, 1e-7,
                                1 / math.sqrt(1 - 0.99 ** 3), 1 - lr * 0.1, 0.1, 0.01],
                               rtol=1e-6)
    sgd = make_optimizer("sgd", 10, 4, 0.5, 0.01, "cpu", momentum=0.9)
    sgd.set_step(0)
    np.testing.assert_allclose(sgd.buffers["opt:hyper"], [0.01, 0.5, 0.9], rtol=1e-6)


def test_one_kernel_per_kind_and_size():
    """Rates, betas, l2 and weight decay live in opt:hyper: they never change the source."""
    t = resolve("cpu")
    source = lambda *a, **k: make_optimizer(*a, target=t, **k).calls()[0].kernel.source(t)
    assert source("adam", 100, 50, 0.0, 0.1) == source("adam", 100, 50, 0.5, 1e-3,
                                                        betas=(0.5, 0.9)) \
        == source("adamw", 100, 50, 0.0, 0.1, weight_decay=0.3)
    assert source("sgd", 100, 50, 0.0, 0.1, momentum=0.5) == source("sgd", 100, 50, 0.1, 0.3,
                                                                     momentum=0.99)
    assert source("sgd", 100, 50, 0.0, 0.1) != source("sgd", 100, 50, 0.0, 0.1, momentum=0.5)
    assert source("adam", 100, 50, 0.0, 0.1) != source("adam", 101, 50, 0.0, 0.1)


def test_layouts_and_tasks():
    t = resolve("cpu")
    opt = make_optimizer("adam", 61706, 61101, 0.0, 0.1, t)
    layouts = opt.layouts()
    assert set(layouts) == {"params", "grads", "opt:hyper", "opt:sumsq", "opt:m", "opt:v"}
    assert layouts["params"].size(1) == layouts["opt:m"].size(1) == 61706
    assert layouts["opt:sumsq"].size(1) == tasks(61706, t) > 1
    assert chunk_size(61706, t) % t.vector == 0
    assert set(opt.buffers) == {n for n in layouts if n.startswith("opt:")}
    names = {a.name for c in opt.calls() for a in c.args}
    assert names == set(layouts)
    plain = make_optimizer("sgd", 10, 0, 0.0, 0.1, t)
    assert set(plain.layouts()) == {"params", "grads", "opt:hyper", "opt:sumsq"}
    assert OPTIMIZERS["adam"].uses_grads


@pytest.mark.parametrize("name, options", [("sgd", {"momentum": 0.9}), ("adamw", {})])
def test_state_round_trip_resumes_bitwise(name, options, kernel_cache):
    rng = np.random.default_rng(3)
    params, grads = rng.standard_normal(77), [rng.standard_normal(77) for _ in range(5)]
    whole = make_optimizer(name, 77, 40, 0.01, 0.01, "cpu", **options)
    end, _ = run_steps(whole, params, grads, kernel_cache)
    first = make_optimizer(name, 77, 40, 0.01, 0.01, "cpu", **options)
    middle, _ = run_steps(first, params, grads[:3], kernel_cache)
    state = first.state()
    assert state["step"] == 2 and all(isinstance(v, np.ndarray) for k, v in state.items()
                                      if k != "step")
    resumed = make_optimizer(name, 77, 40, 0.01, 0.01, "cpu", **options)
    resumed.load_state(state)
    again, _ = run_steps(resumed, middle, grads[3:], kernel_cache, first_step=3)
    np.testing.assert_array_equal(again, end)


@pytest.mark.parametrize("name, options", [("sgd", {"momentum": 0.9, "nesterov": True}),
                                           ("adam", {})])
def test_step_updates_parameters_in_place(name, options, kernel_cache):
    """``step(params, step, cache)`` on a runtime Parameters-like object (its flat buffer
    one longer than the parameters, as Parameters keeps at least one entry)."""
    from types import SimpleNamespace
    from cnngen.codegen.cache import KernelCache
    rng = np.random.default_rng(5)
    params, grads = rng.standard_normal(300), [rng.standard_normal(300) for _ in range(3)]
    expected, _ = run_steps(make_optimizer(name, 300, 120, 0.01, 0.01, "cpu", **options),
                            params, grads, kernel_cache)
    opt = make_optimizer(name, 300, 120, 0.01, 0.01, "cpu", **options)
    holder = SimpleNamespace(flat=np.append(params, 7.0).astype(np.float32),
                             grads=np.zeros(301, np.float32))
    for step, g in enumerate(grads):
        holder.grads[:300] = g
        opt.step(holder, step, KernelCache(kernel_cache))
    np.testing.assert_array_equal(holder.flat[:300], expected)
    assert holder.flat[300] == 7.0
    with pytest.raises(InputError, match=r"params.grads must be a contiguous float32 vector "
                                         r"of at least 300 values; received float64 \(300,\)"):
        opt.step(SimpleNamespace(flat=holder.flat, grads=np.zeros(300)), 3)


def test_load_state_errors():
    opt = make_optimizer("adam", 10, 5, 0.0, 0.1, "cpu")
    with pytest.raises(InputError, match=r"adam: optimizer state must have the keys "
                                         r"\['opt:m', 'opt:v', 'step'\]; received \['step'\]"):
        opt.load_state({"step": 3})
    bad = dict(opt.state(), **{"opt:m": np.zeros(9)})
    with pytest.raises(InputError, match=r"state 'opt:m' must have shape \(10,\); received \(9,\)"):
        opt.load_state(bad)


@pytest.mark.parametrize("call, message", [
    (lambda: make_optimizer("rmsprop", 10, 0, 0.0, 0.1),
     r"optimizer: expected one of \['adam', 'adamw', 'sgd'\]; received 'rmsprop'"),
    (lambda: make_optimizer("sgd", 10, 0, 0.0, 0.1, momentum=1.5),
     r"sgd: option 'momentum' must be a number in \[0, 1\); received 1.5"),
    (lambda: make_optimizer("sgd", 10, 0, 0.0, 0.1, nesterov=True),
     r"sgd: option 'nesterov' needs a momentum in \(0, 1\); received momentum=0.0"),
    (lambda: make_optimizer("sgd", 10, 0, 0.0, 0.1, moment=0.9),
     r"sgd: unknown option 'moment'; expected one of \['momentum', 'nesterov', 'schedule'"),
    (lambda: make_optimizer("adam", 10, 0, 0.0, 0.1, weight_decay=0.1),
     r"adam: unknown option 'weight_decay'.*Use the loss's l2.*or optimizer 'adamw'"),
    (lambda: make_optimizer("adam", 10, 0, 0.0, 0.1, betas=(0.9,)),
     r"adam: option 'betas' must be two numbers in \[0, 1\); received \(0.9,\)"),
    (lambda: make_optimizer("adam", 10, 0, 0.0, 0.1, betas=(0.9, 1.0)),
     r"adam: option 'betas\[1\]' must be a number in \[0, 1\); received 1.0"),
    (lambda: make_optimizer("adamw", 10, 0, 0.0, 0.1, eps=0),
     r"adamw: option 'eps' must be a number in \(0, inf\); received 0"),
    (lambda: make_optimizer("adam", 10, 0, 0.0, -1.0),
     r"adam: option 'lr' must be a number in \(0, inf\); received -1.0"),
    (lambda: make_optimizer("adam", 10, 0, float("nan"), 0.1),
     r"adam: option 'l2' must be a number in \[0, inf\); received nan"),
    (lambda: make_optimizer("adam", 10, 11, 0.0, 0.1),
     r"adam: n_decayed must be at most n_params=10; received 11"),
    (lambda: make_optimizer("adam", 0, 0, 0.0, 0.1),
     r"adam: option 'n_params' must be an integer >= 1; received 0"),
    (lambda: make_optimizer("sgd", 10, 0, 0.0, 0.1, schedule="linear"),
     r"sgd: option 'schedule' must be one of \['constant', 'step', 'cosine'\]; received 'linear'"),
    (lambda: make_optimizer("sgd", 10, 0, 0.0, 0.1, schedule="step"),
     r"sgd: schedule 'step' needs option 'step_every'"),
    (lambda: make_optimizer("sgd", 10, 0, 0.0, 0.1, schedule="step", step_every=0),
     r"sgd: option 'step_every' must be an integer >= 1; received 0"),
    (lambda: make_optimizer("sgd", 10, 0, 0.0, 0.1, schedule="cosine"),
     r"sgd: schedule 'cosine' needs option 'total_steps'"),
    (lambda: make_optimizer("sgd", 10, 0, 0.0, 0.1, schedule="cosine", total_steps=5,
                            warmup_steps=5),
     r"sgd: option 'total_steps' must be an integer >= 6; received 5"),
    (lambda: make_optimizer("sgd", 10, 0, 0.0, 0.1, warmup_steps=-1),
     r"sgd: option 'warmup_steps' must be an integer >= 0; received -1"),
])
def test_errors_name_the_option(call, message):
    with pytest.raises(InputError, match=message):
        call()


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed: no comparison with "
                                          "torch.optim")
@pytest.mark.parametrize("name, options", [("sgd", {"momentum": 0.9, "nesterov": True}),
                                           ("sgd", {"momentum": 0.9}), ("adam", {}),
                                           ("adamw", {"weight_decay": 0.1})])
def test_matches_torch_optim(name, options, kernel_cache):
    """Five steps beside torch.optim, the decayed prefix as its own parameter group, and a
    warm-up + step schedule set on torch's groups each step."""
    import torch
    size, decayed = 1000, 613
    l2 = 0.0 if name == "adamw" else 0.01
    rng = np.random.default_rng(11)
    params = rng.standard_normal(size).astype(np.float32)
    grads = [rng.standard_normal(size).astype(np.float32) for _ in range(5)]
    opt = make_optimizer(name, size, decayed, l2, 0.05, "cpu", schedule="step", step_every=2,
                         gamma=0.5, warmup_steps=2, **options)
    weights = [torch.tensor(params[:decayed]), torch.tensor(params[decayed:])]
    decay = options.get("weight_decay", l2)
    groups = [{"params": [weights[0]], "weight_decay": decay},
              {"params": [weights[1]], "weight_decay": 0.0}]
    cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[name]
    peer = cls(groups, lr=0.05, **{k: v for k, v in options.items() if k != "weight_decay"})
    for step, g in enumerate(grads):
        for group in peer.param_groups:
            group["lr"] = opt.lr_at(step)
        weights[0].grad, weights[1].grad = torch.tensor(g[:decayed]), torch.tensor(g[decayed:])
        peer.step()
    got, _ = run_steps(opt, params, grads, kernel_cache)
    expected = torch.cat(weights).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed: no comparison with "
                                          "torch's schedulers")
def test_schedules_match_torch_schedulers():
    """StepLR, and CosineAnnealingLR up to T_max (past it torch's rate rises again; ours
    stays at 0)."""
    import torch
    param = torch.zeros(1, requires_grad=True)
    for make, ours in [(lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5),
                        LearningRate.make("sgd", 0.1, "step", step_every=3, gamma=0.5)),
                       (lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10),
                        LearningRate.make("sgd", 0.1, "cosine", total_steps=10))]:
        peer = torch.optim.SGD([param], lr=0.1)
        scheduler = make(peer)
        lrs = []
        for _ in range(11):
            lrs.append(peer.param_groups[0]["lr"])
            peer.step()
            scheduler.step()
        np.testing.assert_allclose([ours(t) for t in range(11)], lrs, rtol=1e-6, atol=1e-12)
