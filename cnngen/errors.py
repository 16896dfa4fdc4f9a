"""The errors cnngen raises for user mistakes. Each says what is wrong, what was expected
and what was received, and names the layer or field."""


class CnngenError(Exception):
    """Base of every user-facing cnngen error."""


class SpecError(CnngenError, ValueError):
    """The network description is invalid: a bad field, value, shape or file."""


class InputError(CnngenError, ValueError):
    """An array handed to a network has the wrong shape, dtype or layout."""


class WeightsError(CnngenError, ValueError):
    """Weights are missing, misnamed, misshaped, or a weights file is unreadable."""


class TrainingError(CnngenError, RuntimeError):
    """Training cannot go on: a loss, activation or gradient stopped being finite."""
