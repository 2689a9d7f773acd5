"""deai-flower: federated learning on Flower with no trusted aggregator."""

__version__ = "0.1.0"
