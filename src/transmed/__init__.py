"""TransMed: 3D brain-tumour MRI segmentation with axial attention and dynamic convolution."""

__version__ = "0.1.0"
