"""Producers: the sources of a pipeline's events."""

from ._scripted import ScriptedProducer as ScriptedProducer
from ._scripted import Step as Step

__all__ = ["ScriptedProducer", "Step"]
