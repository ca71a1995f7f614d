"""Public exception types. The server maps each to an HTTP status; messages say what to fix."""


class OptimizerError(Exception):
    """Base class of every error the pipeline raises on purpose."""

    http_status = 400


class InvalidModelError(OptimizerError):
    """The uploaded bytes are not a usable TorchScript archive."""

    http_status = 422


class UnsafeModelError(InvalidModelError):
    """The model holds code optiserve does not run: an op outside the vetted set (model_ops.py)."""

    http_status = 422


class InvalidCalibrationError(OptimizerError):
    """The calibration batch cannot be read, or does not fit the model."""

    http_status = 422


class NonFiniteOutputError(InvalidCalibrationError):
    """The model produced NaN or Inf on the calibration batch."""


class InvalidLabelsError(OptimizerError):
    """Labels are unreadable, not integer class ids, or not one per calibration sample."""

    http_status = 422


class InvalidConfigError(OptimizerError):
    """The pipeline config does not validate."""

    http_status = 422


class InvalidUnlabeledError(InvalidCalibrationError):
    """The unlabeled set cannot be read, or its layout differs from the calibration batch's."""
