"""Compile a CNN, train it on generated kernels, and serve it: the whole of cnngen in one run.

The spec (digits_cnn.yaml) is compiled to training kernels for this CPU: forward in
training mode, loss, every backward kernel and Adam's update. It trains on scikit-learn's
8x8 digits (a shuffled 80/20 split), then the same weights serve the test set through the
fused inference kernels. With PyTorch installed, the same step runs in PyTorch eager for
comparison (in its own process, so the two thread pools do not fight).
Run it: python examples/train_digits.py
"""
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

import cnngen

SPEC = Path(__file__).with_name("digits_cnn.yaml")
STEP_SAMPLES = 30


def median_step_ms(step, samples: int = STEP_SAMPLES) -> tuple[float, float, float]:
    """The median, first and third quartile of ``samples`` timed calls, in ms."""
    step()
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return median, q1, q3


def torch_step_ms(x, y) -> tuple[float, float, float]:
    import torch

    from cnngen.torch_graph import train_step
    torch.set_num_threads(2)
    graph = cnngen.build_graph(cnngen.load_spec(SPEC))
    return median_step_ms(train_step(graph, cnngen.init_weights(graph, 0), x, y))


def main(epochs: int = 20, batch: int = 32):
    trainer = cnngen.Trainer(SPEC, optimizer="adam", lr=2e-3, batch_size=batch, seed=0)
    print(cnngen.check(trainer.spec))
    start = time.perf_counter()
    trainer.fit("digits", epochs=epochs, progress=False)
    print(f"trained {epochs} epochs ({trainer.step_count} steps) in "
          f"{time.perf_counter() - start:.1f} s")
    data = cnngen.load_dataset("digits", seed=0)
    result = trainer.evaluate(data.x_test, data.y_test)
    print(f"test accuracy: {result['accuracy']:.3f} ({len(data.x_test)} images)")
    served = trainer.net(data.x_test).argmax(axis=1)
    print(f"served by the inference kernels: test accuracy {np.mean(served == data.y_test):.3f}")

    x, y = data.x_train[:batch], data.y_train[:batch]
    ours = median_step_ms(lambda: trainer.train_step(x, y))
    print(f"training step, batch {batch}: {ours[0]:.2f} ms (median of {STEP_SAMPLES}, "
          f"IQR {ours[1]:.2f}-{ours[2]:.2f}) on generated kernels ({trainer.target.isa})")
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is not installed: no comparison (pip install torch)")
    else:
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as peer:
            theirs = peer.submit(torch_step_ms, x, y).result()
        print(f"PyTorch eager, the same step: {theirs[0]:.2f} ms (IQR {theirs[1]:.2f}-"
              f"{theirs[2]:.2f}); cnngen takes {ours[0] / theirs[0]:.2f}x its time")



if __name__ == "__main__":
    main()
