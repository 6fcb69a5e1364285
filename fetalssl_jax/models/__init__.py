"""Backbone networks (`resnet`), heads, the decoder, the plane classifier, CPU convolution and pooling, PyTorch io."""
