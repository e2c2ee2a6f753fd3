"""Networks: backbones, the Parameter Refinement Module, the regressor, and frozen encoders.

Heavy imports (torchvision, open_clip) happen inside the submodules, on first use.
"""
