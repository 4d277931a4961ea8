"""CHORDS harness: parallel diffusion sampling behind one small API.

    from chords import sample, CHORDS, Sequential, CoreIndex, Residual
    from baselines import ParaDIGMS, SRDS
"""
from chords.core import CoreIndex, Hit, Residual, SampleResult, Sequential, sample
from chords.chords import CHORDS, init_sequence, parse_init_t, preset_init_sequence
from chords.steps import DDIMStep, EulerStep

__all__ = [
    "CHORDS",
    "CoreIndex",
    "DDIMStep",
    "EulerStep",
    "Hit",
    "Residual",
    "SampleResult",
    "Sequential",
    "init_sequence",
    "parse_init_t",
    "preset_init_sequence",
    "sample",
]
__version__ = "0.1.0"
