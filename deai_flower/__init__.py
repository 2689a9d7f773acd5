"""deai-flower: federated learning on Flower with no trusted aggregator."""

__version__ = "0.1.0"

from .lazy import lazy_exports

__all__ = ["load_model"]

#: ``load_model(path)``: a run's ``model.safetensors`` as an ``nn.Module`` (imported on
#: first use, so that importing the package loads no ML stack).
__getattr__ = lazy_exports(globals(), {"load_model": ".outputs"})
