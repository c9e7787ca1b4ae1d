"""Models as files: checkpoints and pretrained folders loaded, any model format run as a batch function, exports written and checked."""
