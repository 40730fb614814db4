"""genssl: generative semi-supervised learning in PyTorch (M1, M2, M1+M2, SSL-GAN and the baselines they
must beat). The public API, re-exported from the layers that define it::

    from genssl import Trainer, load_run_config
    results = Trainer(load_run_config("experiments/fmnist_supervised.yaml")).fit()
"""

from genssl._version import __version__
from genssl.config import ConfigError, RunConfig, build_run_config, load_run_config
from genssl.data.batching import SSLBatch
from genssl.data.datasets import DatasetNotFoundError, ImageData, from_arrays, load_dataset
from genssl.data.folder import load_image_folder
from genssl.data.spec import DataSpec
from genssl.data.split import Split, make_split
from genssl.encoders.format import Encoder, export_encoder
from genssl.encoders.load import load_encoder
from genssl.methods import create_method
from genssl.methods.base import Method
from genssl.nn.probes import extract_features, fit_and_score, fit_classifier
from genssl.registry import list_methods, register_encoder_arch, register_method
from genssl.training.trainer import DivergenceError, Trainer

__all__ = [
    "ConfigError", "DataSpec", "DatasetNotFoundError", "DivergenceError", "ImageData", "Method", "RunConfig",
    "SSLBatch", "Split", "Trainer", "__version__", "build_run_config", "create_method", "from_arrays",
    "list_methods", "load_dataset", "load_image_folder", "load_run_config", "make_split", "register_method",
    "Encoder", "export_encoder", "extract_features", "fit_and_score", "fit_classifier", "load_encoder",
    "register_encoder_arch",
]
