"""Backbone networks (`resnet`, `vit`), heads, the decoder, the plane classifier, CPU convolution and pooling,
PyTorch and timm weights io."""
