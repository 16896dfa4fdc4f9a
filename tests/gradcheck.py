"""Central finite differences against the reference executor's backward pass."""
import numpy as np

from cnngen import ReferenceExecutor

EPS = 1e-6


def randomize(ref: ReferenceExecutor, rng) -> None:
    """Replace every weight with random values (positive running variances), so that no
    gradient is trivially zero or one."""
    for layer, params in ref.weights.items():
        for name, value in params.items():
            low = 0.5 if name == "running_var" else -1.0
            params[name] = rng.uniform(low, low + 1.5, size=value.shape)


def numeric(f, array: np.ndarray) -> np.ndarray:
    """d f / d array by central differences, perturbing ``array`` in place."""
    grad = np.zeros_like(array)
    for i in np.ndindex(array.shape):
        keep = array[i]
        array[i] = keep + EPS
        up = f()
        array[i] = keep - EPS
        down = f()
        array[i] = keep
        grad[i] = (up - down) / (2 * EPS)
    return grad


def check(spec, batch: int, train: bool, seed: int = 0, rtol=1e-5, atol=1e-7):
    """Compare analytic and numeric gradients of sum(out * r) for the input and every
    trainable parameter."""
    rng = np.random.default_rng(seed)
    ref = ReferenceExecutor(spec, seed=seed)
    randomize(ref, rng)
    x = rng.normal(size=(batch, *ref.graph.input.shape))
    fwd = ref.forward(x, train=train)
    r = rng.normal(size=fwd.out.shape)
    grads = ref.backward(fwd, r)

    def f():
        return float(np.sum(ref.forward(x, train=train, masks=fwd.masks).out * r))

    np.testing.assert_allclose(grads.input, numeric(f, x), rtol=rtol, atol=atol,
                               err_msg="input gradient")
    for node in ref.graph.nodes:
        for name in node.params:
            np.testing.assert_allclose(
                grads.weights[node.name][name], numeric(f, ref.weights[node.name][name]),
                rtol=rtol, atol=atol, err_msg=f"{node.name}/{name} gradient")
    return ref, fwd, grads
