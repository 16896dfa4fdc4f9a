"""The MNIST-1D CNN with the MNIST-1D paper's recipe, on generated kernels.

Greydanus and Kobak's benchmark: 1-D signals of 40 samples, ten classes, a three-layer
stride-2 CNN (cnngen.zoo.mnist1d_cnn), Adam at lr 1e-2, batch 100, 8000 steps, PyTorch's
default initialisation. The data is generated locally by the ``mnist1d`` package.
Run it: python examples/train_mnist1d.py
"""
import time

import cnngen


def main(steps: int = 8000):
    trainer = cnngen.Trainer(cnngen.zoo.mnist1d_cnn(), optimizer="adam", lr=1e-2,
                             batch_size=100, seed=0, init="pytorch")
    start = time.perf_counter()
    history = trainer.fit("mnist1d", steps=steps, progress=False)
    seconds = time.perf_counter() - start
    best = max(r["val_accuracy"] for r in history)
    print(f"{trainer.step_count} steps in {seconds:.1f} s ({history[-1]['images_per_s']:.0f} "
          f"images/s in the last epoch)")
    print(f"test accuracy: {history[-1]['val_accuracy']:.3f} (best epoch {best:.3f}; the paper "
          f"reports 0.94 for this CNN)")


if __name__ == "__main__":
    main()
