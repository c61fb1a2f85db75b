"""Models for the studies: toy models of superposition (``polysdk.models.toy``)."""

from polysdk.models.toy import ToyConfig, ToyModels

__all__ = ["ToyConfig", "ToyModels"]
