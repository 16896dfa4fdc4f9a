"""Mistakes a Trainer's caller makes get an InputError that says what to change, never an
AttributeError from inside the Trainer."""
import numpy as np
import pytest

import cnngen
from cnngen.errors import InputError

# A net that runs forward but has nothing to train against.
NO_LOSS = {"cnngen": 1, "name": "no_loss", "input": {"shape": [3]},
           "layers": [{"name": "out", "op": "dense", "units": 2}]}
FIX = (r"network 'no_loss' has no loss; add 'loss: \{op: softmax_cross_entropy\}' or "
       r"'loss: \{op: mse\}'")


def test_train_step_without_a_loss_says_to_add_one(kernel_cache):
    trainer = cnngen.Trainer(NO_LOSS, batch_size=2, cache_dir=kernel_cache)
    with pytest.raises(InputError, match=rf"train_step: {FIX}"):
        trainer.train_step(np.zeros((2, 3), np.float32), np.zeros(2, np.int64))
    assert trainer.step_count == 0


@pytest.mark.parametrize("call", ["evaluate", "fit"])
def test_evaluate_and_fit_without_a_loss_say_to_add_one(call, kernel_cache):
    trainer = cnngen.Trainer(NO_LOSS, batch_size=2, cache_dir=kernel_cache)
    x, y = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    with pytest.raises(InputError, match=FIX):
        if call == "evaluate":
            trainer.evaluate(x, y)
        else:
            trainer.fit({"x_train": x, "y_train": y, "x_test": x, "y_test": y}, epochs=1,
                        progress=False)
