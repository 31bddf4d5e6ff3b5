"""gblend_ray: multi-modal classifiers trained with Gradient-Blending (Wang, Tran,
Feiszli, CVPR 2020), distributed on Ray."""

__version__ = "0.1.0"
