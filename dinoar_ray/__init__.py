"""dinoar-ray: anomaly detection with a spatial AR model over DINOv3 embeddings, on Ray."""
__version__ = "0.1.0"
