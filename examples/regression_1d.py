"""A 1-D CNN regression trained with MSE: estimate a noisy sine's frequency and phase.

Each sample is 64 points of sin(2*pi*f*t + phase) plus noise; the network reads the signal
and outputs (f, cos phase, sin phase). Float targets make ``fit`` train the spec's MSE loss.
Run it: python examples/regression_1d.py
"""
import numpy as np

import cnngen

SPEC = {
    "cnngen": 1, "name": "sine_regression", "input": {"shape": [1, 64]},
    "layers": [
        {"name": "c1", "op": "conv1d", "filters": 16, "kernel": 5, "padding": 2, "activation": "relu"},
        {"name": "p1", "op": "maxpool1d", "size": 2},
        {"name": "c2", "op": "conv1d", "filters": 32, "kernel": 5, "padding": 2, "activation": "relu"},
        {"name": "gap", "op": "global_avgpool"},
        {"name": "f1", "op": "dense", "units": 32, "activation": "relu"},
        {"name": "out", "op": "dense", "units": 3},
    ],
    "loss": {"op": "mse"},
}


def make_sines(n: int, rng: np.random.Generator):
    t = np.linspace(0, 1, 64)
    freq = rng.uniform(1, 4, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    x = np.sin(2 * np.pi * freq[:, None] * t + phase[:, None]) + rng.normal(0, 0.1, (n, 64))
    y = np.stack([freq, np.cos(phase), np.sin(phase)], axis=1)
    return x[:, None].astype(np.float32), y.astype(np.float32)


def main(epochs: int = 30):
    rng = np.random.default_rng(0)
    x_train, y_train = make_sines(4000, rng)
    x_test, y_test = make_sines(500, rng)
    data = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    trainer = cnngen.Trainer(SPEC, optimizer="adam", lr=3e-3, batch_size=64, seed=0)
    history = trainer.fit(data, epochs=epochs, progress=False)
    baseline = float(np.mean((y_test - y_train.mean(axis=0)) ** 2))
    print(f"test MSE: {history[-1]['val_loss']:.4f} (predicting the mean: {baseline:.4f})")
    predicted = trainer.net(x_test[:3])
    for want, got in zip(y_test[:3], predicted):
        print(f"  frequency {want[0]:.2f} -> {got[0]:.2f}")


if __name__ == "__main__":
    main()
