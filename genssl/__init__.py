"""genssl: generative semi-supervised learning in PyTorch.

    from genssl import load_run_config, Trainer
    results = Trainer(load_run_config("experiments/fmnist100_supervised.yaml")).fit()
"""

__version__ = "0.1.0"

from .batching import SSLBatch
from .config import ConfigError, RunConfig, build_run_config, load_run_config
from .datasets import DatasetNotFoundError, ImageData, from_arrays, load_dataset, load_image_folder
from .downstream import extract_features, fit_and_score, fit_classifier
from .encoders import Encoder, export_encoder, load_encoder, register_encoder_arch
from .methods.base import DataSpec, Method
from .registry import create_method, list_methods, register_method
from .split import Split, make_split
from .trainer import DivergenceError, Trainer

__all__ = [
    "ConfigError", "DataSpec", "DatasetNotFoundError", "DivergenceError", "ImageData", "Method", "RunConfig",
    "SSLBatch", "Split", "Trainer", "build_run_config", "create_method", "from_arrays", "list_methods",
    "load_dataset", "load_image_folder", "load_run_config", "make_split", "register_method",
    "Encoder", "export_encoder", "extract_features", "fit_and_score", "fit_classifier", "load_encoder",
    "register_encoder_arch",
]
