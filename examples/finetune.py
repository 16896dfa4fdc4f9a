"""Transfer learning: train a CNN on digits 0-4, then reuse its features for digits 5-9.

The second network is the same spec with a new head. It loads the first one's weights by
layer name (the report says what matched and what was skipped), freezes the convolutions
and trains the dense layers above them: no gradient is computed below the first of them.
Run it: python examples/finetune.py
"""
from pathlib import Path

import cnngen

SPEC = cnngen.load_spec(Path(__file__).with_name("digits_cnn.yaml"))


def subset(data, labels):
    """The digits in ``labels``, relabelled 0..len(labels)-1."""
    out = {}
    for part in ("train", "test"):
        x, y = getattr(data, f"x_{part}"), getattr(data, f"y_{part}")
        keep = (y >= labels[0]) & (y <= labels[-1])
        out[f"x_{part}"], out[f"y_{part}"] = x[keep], y[keep] - labels[0]
    return out


def main():
    data = cnngen.load_dataset("digits", seed=0)
    low, high = subset(data, range(0, 5)), subset(data, range(5, 10))
    five = dict(SPEC, layers=SPEC["layers"][:-1] + [{"name": "out", "op": "dense", "units": 5}])

    source = cnngen.Trainer(five, lr=2e-3, batch_size=32, seed=0)
    source.fit(low, epochs=15, progress=False)
    print(f"digits 0-4: test accuracy {source.history[-1]['val_accuracy']:.3f}")

    head = dict(five, layers=five["layers"][:-1] + [{"name": "head", "op": "dense", "units": 5}])
    tuned = cnngen.Trainer(head, lr=2e-3, batch_size=32, seed=1,
                           weights=source.net.weights, freeze=["c*"])
    print(tuned.transfer_report)
    tuned.fit(high, epochs=15, progress=False)
    print(f"digits 5-9 with frozen convolutions and a new head: test accuracy "
          f"{tuned.history[-1]['val_accuracy']:.3f}")


if __name__ == "__main__":
    main()
