"""cai-pipeline: Constitutional AI data generation with a built-in preference trainer."""

__version__ = "0.1.0"
