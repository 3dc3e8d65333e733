"""mmviz: see and fix the geometry of image-text embedding spaces."""
__version__ = "0.1.0"
