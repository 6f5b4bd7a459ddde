"""What maskflow's things are, wherever they are stored: the model catalogue, the result kinds,
image formats, decoding and encoding, and the segmenter that runs a model."""
