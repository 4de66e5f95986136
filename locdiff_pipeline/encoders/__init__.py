"""The frozen image encoders: which one (`encoder_spec`), the encoders and their test-time views
(`image_encoder`), the weight-free scene descriptors, where open_clip weights come from, and decoding in
worker processes. Builds on `data` (image decoding, imagery kinds) and `method`."""
