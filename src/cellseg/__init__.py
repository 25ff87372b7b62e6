"""cellseg: train, evaluate and compare segmentation models on CellMap FIB-SEM organelles."""

__version__ = "0.1.0"
