"""Train a small CNN on a generated dataset, then serve it with compiled CPU kernels.

Training uses cnngen's float64 reference executor, the exact oracle every generated kernel
is tested against: spec -> graph -> forward -> loss -> backward -> update. The trained
weights then go to ``cnngen.compile``, which generates SIMD kernels for this CPU and runs
the test set through them. Run it: python examples/train_reference.py
"""
import time
from pathlib import Path

import numpy as np

import cnngen

CLASSES = ("horizontal bar", "vertical bar", "diagonal", "box")


def make_shapes(n: int, rng: np.random.Generator, size: int = 16):
    """``n`` noisy 16x16 images of the four shapes at random positions, and their labels."""
    images = np.zeros((n, 1, size, size))
    labels = rng.integers(0, len(CLASSES), size=n)
    for img, label in zip(images[:, 0], labels):
        r, c = rng.integers(2, size - 8, size=2)
        length = rng.integers(5, 8)
        if label == 0:
            img[r, c:c + length] = 1
        elif label == 1:
            img[r:r + length, c] = 1
        elif label == 2:
            img[np.arange(length) + r, np.arange(length) + c] = 1
        else:
            img[r:r + length, [c, c + length - 1]] = 1
            img[[r, r + length - 1], c:c + length] = 1
    images += rng.normal(0, 0.25, images.shape)
    return images, labels


WARM_CALLS = 20


def main(steps: int = 200, batch: int = 32, lr: float = 0.05, momentum: float = 0.9):
    rng = np.random.default_rng(0)
    spec = cnngen.load_spec(Path(__file__).with_name("shapes_cnn.yaml"))
    print(cnngen.check(spec))
    net = cnngen.ReferenceExecutor(spec, seed=0)
    x_train, y_train = make_shapes(2048, rng)
    x_test, y_test = make_shapes(512, rng)
    velocity = {layer: {p: np.zeros_like(v) for p, v in ps.items()}
                for layer, ps in net.weights.items()}
    for step in range(1, steps + 1):
        idx = rng.integers(0, len(x_train), size=batch)
        fwd = net.forward(x_train[idx], train=True, seed=step)
        loss, dout = net.loss(fwd.out, y_train[idx])
        grads = net.backward(fwd, dout)
        for layer, params in grads.weights.items():       # SGD with momentum
            for name, g in params.items():
                v = velocity[layer][name]
                v *= momentum
                v -= lr * g
                net.weights[layer][name] += v
        for layer, stats in fwd.state_updates.items():     # batch-norm running statistics
            net.weights[layer].update(stats)
        if step % 40 == 0:
            print(f"step {step:4d}  loss {loss:.4f}")
    predicted = net.forward(x_test).out.argmax(axis=1)
    print(f"test accuracy: {np.mean(predicted == y_test):.3f}")

    start = time.perf_counter()
    compiled = cnngen.compile(spec, weights=net.weights)
    compiled.plan(len(x_test))
    compile_s = time.perf_counter() - start
    images = x_test.astype(np.float32)
    # the first call pays the thread pool's start-up and the buffers' first page faults
    start = time.perf_counter()
    served = compiled(images).argmax(axis=1)
    cold_ms = (time.perf_counter() - start) * 1e3
    warm = []
    for _ in range(WARM_CALLS):
        start = time.perf_counter()
        compiled(images)
        warm.append((time.perf_counter() - start) * 1e3)
    print(f"compiled kernels ({compiled.target.isa}, {len(compiled.kernels)} kernels, "
          f"{compile_s:.1f} s to build or load): test accuracy {np.mean(served == y_test):.3f}, "
          f"same class as the reference for {np.mean(served == predicted):.1%} of images")
    print(f"serving {len(x_test)} images: {np.median(warm):.1f} ms per call (median of "
          f"{WARM_CALLS} warm calls, {min(warm):.1f}-{max(warm):.1f}); the first, cold call "
          f"took {cold_ms:.1f} ms")


if __name__ == "__main__":
    main()
