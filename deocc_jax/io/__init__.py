"""Files, images, video and exported-model runners: the bottom layer (no deocc imports but errors)."""
